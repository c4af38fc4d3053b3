"""ds01-controller: Kubernetes-native GPU access control for shared GPU servers."""

__version__ = "0.1.0"
