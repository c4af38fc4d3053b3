// Command kindcheck decodes a kind cluster config strictly into kind's
// v1alpha4 types (unknown or misspelt fields are errors, as they are for
// `kind create cluster`), applies kind's defaults and checks the rules kind
// validates that matter for this project. It prints a JSON summary of the
// nodes so tests can assert on roles and labels.
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"sigs.k8s.io/kind/pkg/apis/config/v1alpha4"
	"sigs.k8s.io/yaml"
)

type nodeSummary struct {
	Role   string            `json:"role"`
	Image  string            `json:"image"`
	Labels map[string]string `json:"labels"`
	Mounts []string          `json:"mounts"`
}

func check(cfg *v1alpha4.Cluster) []string {
	var problems []string
	if cfg.Kind != "Cluster" || cfg.APIVersion != "kind.x-k8s.io/v1alpha4" {
		problems = append(problems, fmt.Sprintf("kind/apiVersion: got %s %s, want Cluster kind.x-k8s.io/v1alpha4", cfg.Kind, cfg.APIVersion))
	}
	controlPlanes := 0
	for i, node := range cfg.Nodes {
		switch node.Role {
		case v1alpha4.ControlPlaneRole:
			controlPlanes++
		case v1alpha4.WorkerRole:
		default:
			problems = append(problems, fmt.Sprintf("nodes[%d].role: %q is neither control-plane nor worker", i, node.Role))
		}
		for j, mount := range node.ExtraMounts {
			if mount.HostPath == "" || mount.ContainerPath == "" {
				problems = append(problems, fmt.Sprintf("nodes[%d].extraMounts[%d]: hostPath and containerPath are required", i, j))
			}
		}
		for j, port := range node.ExtraPortMappings {
			if port.ContainerPort <= 0 || port.ContainerPort > 65535 || port.HostPort < 0 || port.HostPort > 65535 {
				problems = append(problems, fmt.Sprintf("nodes[%d].extraPortMappings[%d]: port out of range", i, j))
			}
		}
	}
	if controlPlanes < 1 {
		problems = append(problems, "nodes: at least one control-plane node is required")
	}
	return problems
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: kindcheck CONFIG")
		os.Exit(2)
	}
	raw, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	cfg := &v1alpha4.Cluster{}
	if err := yaml.UnmarshalStrict(raw, cfg); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
	v1alpha4.SetDefaultsCluster(cfg)
	if problems := check(cfg); len(problems) > 0 {
		for _, p := range problems {
			fmt.Fprintf(os.Stderr, "%s: %s\n", os.Args[1], p)
		}
		os.Exit(1)
	}
	var nodes []nodeSummary
	for _, node := range cfg.Nodes {
		summary := nodeSummary{Role: string(node.Role), Image: node.Image, Labels: node.Labels}
		for _, mount := range node.ExtraMounts {
			summary.Mounts = append(summary.Mounts, mount.HostPath+":"+mount.ContainerPath)
		}
		nodes = append(nodes, summary)
	}
	out, _ := json.Marshal(map[string]any{"name": cfg.Name, "nodes": nodes})
	fmt.Println(string(out))
}
