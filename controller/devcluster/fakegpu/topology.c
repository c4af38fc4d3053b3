/*
 * A fake libnvidia-ml.so.1 (agent tests, `ds01 dev up`): the topology file.
 *
 * The file's path is read from $DS01_FAKE_NVML_TOPOLOGY at every NVML call and
 * the file is parsed again whenever its (device, inode, size, mtime) changes,
 * so a test can rewrite it at run time and the next call sees the new state.
 * Writers must replace the file atomically and make its mtime strictly
 * increase (controller/devcluster/fakegpu/topology.py does both): mtime from the
 * kernel's coarse clock could otherwise repeat between two quick writes, and
 * re-reading the whole file at every call would dominate the agent benchmark.
 *
 * File format: one record per line, `#` starts a comment, fields are key=value
 * separated by spaces; `name=` (where present) must come last and takes the rest
 * of the line. Sizes are MiB; -1 means "absent" (no GI/CI, memory not available).
 *
 *   driver 550.54.15
 *   wait_error 0                 error code nvmlEventSetWait returns (0: none)
 *   gpu index=0 uuid=GPU-.. minor=0 bus=00000000:07:00.0 pciid=0x20B010DE
 *       memory=40960 used=0 util=0 memutil=0 migcapable=1 mig=1 migmax=7
 *       lost=0 links=12 name=NVIDIA A100-SXM4-40GB
 *   mig gpu=0 index=0 uuid=MIG-.. gi=1 ci=0 profile=9 gislices=3 cislices=3
 *       start=4 size=4 memory=20096 used=0 name=NVIDIA A100-SXM4-40GB MIG 3g.20gb
 *   link gpu=0 link=0 type=2 bus=00000000:C4:00.0     (type 0 GPU, 2 NVSwitch)
 *   proc pid=4242 gpu=0 gi=1 ci=0 used=512
 *   xid seq=1 gpu=3 xid=79 gi=-1 ci=-1
 */

#define _GNU_SOURCE
#include "fakenvml.h"

struct topology st;
static int loaded;
static char loaded_path[4096];
static struct stat loaded_stat;

/* ---- parsing ---- */

/* The value of ` key=` in a record, or NULL. */
static const char *field(const char *line, const char *key) {
    char pattern[32];
    snprintf(pattern, sizeof pattern, " %s=", key);
    const char *at = strstr(line, pattern);
    return at ? at + strlen(pattern) : NULL;
}

static long long num(const char *line, const char *key, long long fallback) {
    const char *value = field(line, key);
    return value ? strtoll(value, NULL, 0) : fallback;
}

static void word(const char *line, const char *key, char *out, size_t size) {
    const char *value = field(line, key);
    size_t n = 0;
    if (value)
        while (value[n] && value[n] != ' ' && value[n] != '\n' && n + 1 < size) n++;
    memcpy(out, value ? value : "", n);
    out[n] = 0;
}

static void rest(const char *line, const char *key, char *out, size_t size) {
    const char *value = field(line, key);
    snprintf(out, size, "%s", value ? value : "");
    out[strcspn(out, "\n")] = 0;
}


/* Parse one record; returns an error message or NULL. */
static const char *parse_line(char *line) {
    char kind[16] = "";
    line[strcspn(line, "#")] = 0;
    if (sscanf(line, "%15s", kind) != 1) return NULL; /* blank */
    if (!strcmp(kind, "driver")) {
        if (sscanf(line, "%*s %79s", st.driver) != 1) return "driver: no version";
    } else if (!strcmp(kind, "wait_error")) {
        if (sscanf(line, "%*s %d", &st.wait_error) != 1) return "wait_error: no code";
    } else if (!strcmp(kind, "gpu")) {
        long long i = num(line, "index", -1);
        if (!in_range(i, MAX_GPUS)) return "gpu: index out of range";
        struct gpu *g = &st.gpus[i];
        g->present = 1;
        word(line, "uuid", g->uuid, sizeof g->uuid);
        word(line, "bus", g->bus, sizeof g->bus);
        rest(line, "name", g->name, sizeof g->name);
        g->minor = (unsigned int)num(line, "minor", i);
        g->pciid = (unsigned int)num(line, "pciid", 0x20B010DE);
        g->memory = (unsigned long long)num(line, "memory", 40960);
        g->used = (unsigned long long)num(line, "used", 0);
        g->util = (int)num(line, "util", 0);
        g->memutil = (int)num(line, "memutil", 0);
        g->migcapable = (int)num(line, "migcapable", 1);
        g->mig = (int)num(line, "mig", 0);
        g->migmax = (int)num(line, "migmax", 7);
        g->lost = (int)num(line, "lost", 0);
        g->links = (int)num(line, "links", 0);
        if (g->links > MAX_LINKS || g->migmax > MAX_MIGS) return "gpu: links or migmax too large";
        if (i + 1 > st.ngpus) st.ngpus = (int)i + 1;
    } else if (!strcmp(kind, "mig")) {
        long long gi = num(line, "gpu", -1), i = num(line, "index", -1);
        if (!in_range(gi, MAX_GPUS) || !in_range(i, MAX_MIGS)) return "mig: gpu or index out of range";
        struct mig *m = &st.gpus[gi].migs[i];
        m->present = 1;
        word(line, "uuid", m->uuid, sizeof m->uuid);
        rest(line, "name", m->name, sizeof m->name);
        m->gi = (unsigned int)num(line, "gi", 0);
        m->ci = (unsigned int)num(line, "ci", 0);
        m->profile = (unsigned int)num(line, "profile", 0);
        m->gislices = (unsigned int)num(line, "gislices", 1);
        m->cislices = (unsigned int)num(line, "cislices", m->gislices);
        m->start = (unsigned int)num(line, "start", 0);
        m->size = (unsigned int)num(line, "size", 1);
        m->memory = (unsigned long long)num(line, "memory", 0);
        m->used = (unsigned long long)num(line, "used", 0);
        if (m->gi >= MAX_GIS) return "mig: gi out of range";
    } else if (!strcmp(kind, "link")) {
        long long g = num(line, "gpu", -1), l = num(line, "link", -1);
        if (!in_range(g, MAX_GPUS) || !in_range(l, MAX_LINKS)) return "link: gpu or link out of range";
        struct link *k = &st.gpus[g].link[l];
        k->present = 1;
        k->type = (int)num(line, "type", 0);
        word(line, "bus", k->bus, sizeof k->bus);
    } else if (!strcmp(kind, "proc")) {
        if (st.nprocs >= MAX_PROCS) return "proc: too many processes";
        struct proc *p = &st.procs[st.nprocs++];
        p->pid = (unsigned int)num(line, "pid", 0);
        p->gpu = (int)num(line, "gpu", -1);
        p->gi = (int)num(line, "gi", -1);
        p->ci = (int)num(line, "ci", -1);
        p->used = num(line, "used", -1);
    } else if (!strcmp(kind, "xid")) {
        if (st.nxids >= MAX_XIDS) return "xid: too many events";
        struct xid *x = &st.xids[st.nxids++];
        x->seq = (unsigned long long)num(line, "seq", 0);
        x->gpu = (int)num(line, "gpu", -1);
        x->xid = (unsigned long long)num(line, "xid", 0);
        x->gi = (int)num(line, "gi", -1);
        x->ci = (int)num(line, "ci", -1);
    } else {
        return "unknown record";
    }
    return NULL;
}

/* Re-read the topology if it changed. Called with the lock held. */
nvmlReturn_t fake_reload(void) {
    const char *path = getenv(TOPOLOGY_ENV);
    struct stat now;
    if (!path || stat(path, &now) != 0) return NVML_ERROR_DRIVER_NOT_LOADED;
    if (loaded && !strcmp(path, loaded_path) && now.st_dev == loaded_stat.st_dev &&
        now.st_ino == loaded_stat.st_ino && now.st_size == loaded_stat.st_size &&
        now.st_mtim.tv_sec == loaded_stat.st_mtim.tv_sec &&
        now.st_mtim.tv_nsec == loaded_stat.st_mtim.tv_nsec)
        return NVML_SUCCESS;
    FILE *file = fopen(path, "r");
    if (!file) return NVML_ERROR_DRIVER_NOT_LOADED;
    memset(&st, 0, sizeof st);
    loaded = 0;
    char line[512];
    int number = 0;
    const char *error = NULL;
    while (!error && fgets(line, sizeof line, file)) {
        number++;
        error = parse_line(line);
    }
    fclose(file);
    if (error) {
        fprintf(stderr, "fake NVML: %s:%d: %s\n", path, number, error);
        return NVML_ERROR_UNKNOWN;
    }
    snprintf(loaded_path, sizeof loaded_path, "%s", path);
    loaded_stat = now;
    loaded = 1;
    return NVML_SUCCESS;
}
