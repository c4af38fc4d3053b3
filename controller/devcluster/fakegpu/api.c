/*
 * A fake libnvidia-ml.so.1 (agent tests, `ds01 dev up`): the NVML entry points.
 *
 * Each one takes the lock, checks nvmlInit was called, re-reads the topology
 * if it changed (topology.c) and answers from it. Handles point into static
 * arrays indexed by GPU and MIG position, so they stay valid across reloads
 * and are resolved against the current topology at every call.
 *
 * Behaviour copied from the real library's documented answers: utilisation of
 * a GPU in MIG mode or of a MIG device is NVML_ERROR_NOT_SUPPORTED; every call
 * on a lost GPU (and its MIG devices) is NVML_ERROR_GPU_IS_LOST; nvmlInit is
 * reference counted; an event set delivers only events that happen after it
 * was created, each once, and nvmlEventSetWait_v2 waits up to its timeout.
 */

#define _GNU_SOURCE
#include "fakenvml.h"

/* Handles stay valid across reloads: they name positions, resolved per call. */
struct handle {
    int gpu, mig; /* mig < 0: the whole GPU */
};
struct gi_handle {
    int gpu;
    unsigned int gi;
};
struct event_set {
    int used;
    unsigned long long registered[MAX_GPUS];
    unsigned long long delivered; /* highest xid seq seen by this set */
};

static struct handle gpu_handles[MAX_GPUS];
static struct handle mig_handles[MAX_GPUS][MAX_MIGS];
static struct gi_handle gi_handles[MAX_GPUS][MAX_GIS];
static struct event_set event_sets[MAX_EVENT_SETS];

/* Whether pointer `p` points into the (possibly two-dimensional) static array `a`. */
#define WITHIN(p, a) \
    ((const char *)(p) >= (const char *)(a) && (const char *)(p) < (const char *)(a) + sizeof(a))

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int init_count;

/* ---- call framing: every entry point locks, checks init, reloads ---- */

static nvmlReturn_t enter(void) {
    pthread_mutex_lock(&lock);
    if (init_count == 0) return NVML_ERROR_UNINITIALIZED;
    return fake_reload();
}

static nvmlReturn_t leave(nvmlReturn_t rc) {
    pthread_mutex_unlock(&lock);
    return rc;
}

/* Resolve a device handle to its GPU (and MIG device, if it is one). */
static nvmlReturn_t resolve(void *device, struct gpu **gpu, struct mig **mig) {
    struct handle *h = device;
    if (!WITHIN(h, gpu_handles) && !WITHIN(h, mig_handles)) return NVML_ERROR_INVALID_ARGUMENT;
    if (!in_range(h->gpu, st.ngpus) || !st.gpus[h->gpu].present) return NVML_ERROR_INVALID_ARGUMENT;
    *gpu = &st.gpus[h->gpu];
    *mig = NULL;
    if (h->mig >= 0) {
        if (!(*gpu)->mig || !(*gpu)->migs[h->mig].present) return NVML_ERROR_INVALID_ARGUMENT;
        *mig = &(*gpu)->migs[h->mig];
    }
    return (*gpu)->lost ? NVML_ERROR_GPU_IS_LOST : NVML_SUCCESS;
}

static nvmlReturn_t enter_device(void *device, struct gpu **gpu, struct mig **mig) {
    nvmlReturn_t rc = enter();
    return rc != NVML_SUCCESS ? rc : resolve(device, gpu, mig);
}

static nvmlReturn_t copy_text(char *out, unsigned int size, const char *text) {
    if (!out) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(text) + 1 > size) return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(out, text);
    return NVML_SUCCESS;
}

static void fill_pci(nvmlPciInfo_t *pci, const char *bus_id, unsigned int device_id) {
    unsigned int domain = 0, bus = 0, slot = 0, function = 0;
    memset(pci, 0, sizeof *pci);
    sscanf(bus_id, "%x:%x:%x.%x", &domain, &bus, &slot, &function);
    pci->domain = domain;
    pci->bus = bus;
    pci->device = slot;
    pci->pciDeviceId = device_id;
    pci->pciSubSystemId = 0x145F10DE;
    snprintf(pci->busId, sizeof pci->busId, "%s", bus_id);
    snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "%04X:%02X:%02X.%X", domain & 0xFFFF, bus,
             slot, function);
}

static unsigned long long max_xid_seq(void) {
    unsigned long long highest = 0;
    for (int i = 0; i < st.nxids; i++)
        if (st.xids[i].seq > highest) highest = st.xids[i].seq;
    return highest;
}

/* ---- initialisation ---- */

EXPORT nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    pthread_mutex_lock(&lock);
    for (int g = 0; g < MAX_GPUS; g++) {
        gpu_handles[g] = (struct handle){g, -1};
        for (int m = 0; m < MAX_MIGS; m++) mig_handles[g][m] = (struct handle){g, m};
        for (unsigned int i = 0; i < MAX_GIS; i++) gi_handles[g][i] = (struct gi_handle){g, i};
    }
    nvmlReturn_t rc = fake_reload();
    if (rc == NVML_SUCCESS) init_count++;
    return leave(rc);
}

EXPORT nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }

EXPORT nvmlReturn_t nvmlShutdown(void) {
    pthread_mutex_lock(&lock);
    if (init_count == 0) return leave(NVML_ERROR_UNINITIALIZED);
    init_count--;
    return leave(NVML_SUCCESS);
}

EXPORT const char *nvmlErrorString(nvmlReturn_t rc) {
    switch (rc) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_TIMEOUT: return "Timeout";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    default: return "Unknown Error";
    }
}

EXPORT nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int size) {
    nvmlReturn_t rc = enter();
    return leave(rc ? rc : copy_text(version, size, st.driver));
}

/* ---- devices ---- */

EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    nvmlReturn_t rc = enter();
    if (rc == NVML_SUCCESS && !count) rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS) *count = (unsigned int)st.ngpus;
    return leave(rc);
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, void **device) {
    nvmlReturn_t rc = enter();
    if (rc == NVML_SUCCESS && (!device || index >= (unsigned int)st.ngpus || !st.gpus[index].present))
        rc = NVML_ERROR_INVALID_ARGUMENT;
    else if (rc == NVML_SUCCESS && st.gpus[index].lost)
        rc = NVML_ERROR_GPU_IS_LOST;
    if (rc == NVML_SUCCESS) *device = &gpu_handles[index];
    return leave(rc);
}

EXPORT nvmlReturn_t nvmlDeviceGetUUID(void *device, char *uuid, unsigned int size) {
    struct gpu *g;
    struct mig *m;
    nvmlReturn_t rc = enter_device(device, &g, &m);
    return leave(rc ? rc : copy_text(uuid, size, m ? m->uuid : g->uuid));
}

EXPORT nvmlReturn_t nvmlDeviceGetName(void *device, char *name, unsigned int size) {
    struct gpu *g;
    struct mig *m;
    nvmlReturn_t rc = enter_device(device, &g, &m);
    return leave(rc ? rc : copy_text(name, size, m && m->name[0] ? m->name : g->name));
}

EXPORT nvmlReturn_t nvmlDeviceGetMinorNumber(void *device, unsigned int *minor) {
    struct gpu *g;
    struct mig *m;
    nvmlReturn_t rc = enter_device(device, &g, &m);
    if (rc == NVML_SUCCESS && (!minor || m)) rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS) *minor = g->minor;
    return leave(rc);
}

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(void *device, nvmlMemory_t *memory) {
    struct gpu *g;
    struct mig *m;
    nvmlReturn_t rc = enter_device(device, &g, &m);
    if (rc == NVML_SUCCESS && !memory) rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS) {
        memory->total = (m ? m->memory : g->memory) * MIB;
        memory->used = (m ? m->used : g->used) * MIB;
        memory->free = memory->total > memory->used ? memory->total - memory->used : 0;
    }
    return leave(rc);
}

EXPORT nvmlReturn_t nvmlDeviceGetPciInfo_v3(void *device, nvmlPciInfo_t *pci) {
    struct gpu *g;
    struct mig *m;
    nvmlReturn_t rc = enter_device(device, &g, &m);
    if (rc == NVML_SUCCESS && !pci) rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS) fill_pci(pci, g->bus, g->pciid);
    return leave(rc);
}

EXPORT nvmlReturn_t nvmlDeviceGetUtilizationRates(void *device, nvmlUtilization_t *utilization) {
    struct gpu *g;
    struct mig *m;
    nvmlReturn_t rc = enter_device(device, &g, &m);
    if (rc == NVML_SUCCESS && !utilization) rc = NVML_ERROR_INVALID_ARGUMENT;
    /* NVML has no utilisation counters for MIG: not for the GPU, not per instance. */
    if (rc == NVML_SUCCESS && (m || g->mig)) rc = NVML_ERROR_NOT_SUPPORTED;
    if (rc == NVML_SUCCESS) {
        utilization->gpu = (unsigned int)g->util;
        utilization->memory = (unsigned int)g->memutil;
    }
    return leave(rc);
}

EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(void *device, unsigned int *count,
                                                             nvmlProcessInfo_t *infos) {
    struct gpu *g;
    struct mig *m;
    nvmlReturn_t rc = enter_device(device, &g, &m);
    if (rc == NVML_SUCCESS && !count) rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc != NVML_SUCCESS) return leave(rc);
    int index = (int)(g - st.gpus);
    unsigned int found = 0;
    for (int i = 0; i < st.nprocs; i++) {
        struct proc *p = &st.procs[i];
        if (p->gpu != index) continue;
        /* A MIG device lists its own processes; the parent GPU lists all of them. */
        if (m && ((unsigned int)p->gi != m->gi || (unsigned int)p->ci != m->ci)) continue;
        if (infos && found < *count) {
            infos[found].pid = p->pid;
            infos[found].usedGpuMemory =
                p->used < 0 ? VALUE_NOT_AVAILABLE : (unsigned long long)p->used * MIB;
            infos[found].gpuInstanceId = p->gi < 0 ? ID_NONE : (unsigned int)p->gi;
            infos[found].computeInstanceId = p->ci < 0 ? ID_NONE : (unsigned int)p->ci;
        }
        found++;
    }
    rc = found > *count || (found && !infos) ? NVML_ERROR_INSUFFICIENT_SIZE : NVML_SUCCESS;
    *count = found;
    return leave(rc);
}

/* ---- MIG ---- */

EXPORT nvmlReturn_t nvmlDeviceGetMigMode(void *device, unsigned int *current, unsigned int *pending) {
    struct gpu *g;
    struct mig *m;
    nvmlReturn_t rc = enter_device(device, &g, &m);
    if (rc == NVML_SUCCESS && (!current || !pending || m)) rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS && !g->migcapable) rc = NVML_ERROR_NOT_SUPPORTED;
    if (rc == NVML_SUCCESS) *current = *pending = (unsigned int)g->mig;
    return leave(rc);
}

EXPORT nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(void *device, unsigned int *count) {
    struct gpu *g;
    struct mig *m;
    nvmlReturn_t rc = enter_device(device, &g, &m);
    if (rc == NVML_SUCCESS && (!count || m)) rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS) *count = g->migcapable && g->mig ? (unsigned int)g->migmax : 0;
    return leave(rc);
}

EXPORT nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(void *device, unsigned int index, void **mig) {
    struct gpu *g;
    struct mig *m;
    nvmlReturn_t rc = enter_device(device, &g, &m);
    if (rc == NVML_SUCCESS && (!mig || m || index >= (unsigned int)g->migmax))
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS && !g->mig) rc = NVML_ERROR_NOT_SUPPORTED;
    if (rc == NVML_SUCCESS && !g->migs[index].present) rc = NVML_ERROR_NOT_FOUND;
    if (rc == NVML_SUCCESS) *mig = &mig_handles[g - st.gpus][index];
    return leave(rc);
}

EXPORT nvmlReturn_t nvmlDeviceIsMigDeviceHandle(void *device, unsigned int *is_mig) {
    struct gpu *g;
    struct mig *m;
    nvmlReturn_t rc = enter_device(device, &g, &m);
    if (rc == NVML_SUCCESS && !is_mig) rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS) *is_mig = m != NULL;
    return leave(rc);
}

EXPORT nvmlReturn_t nvmlDeviceGetDeviceHandleFromMigDeviceHandle(void *device, void **parent) {
    struct gpu *g;
    struct mig *m;
    nvmlReturn_t rc = enter_device(device, &g, &m);
    if (rc == NVML_SUCCESS && (!parent || !m)) rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS) *parent = &gpu_handles[g - st.gpus];
    return leave(rc);
}

EXPORT nvmlReturn_t nvmlDeviceGetGpuInstanceId(void *device, unsigned int *id) {
    struct gpu *g;
    struct mig *m;
    nvmlReturn_t rc = enter_device(device, &g, &m);
    if (rc == NVML_SUCCESS && (!id || !m)) rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS) *id = m->gi;
    return leave(rc);
}

EXPORT nvmlReturn_t nvmlDeviceGetComputeInstanceId(void *device, unsigned int *id) {
    struct gpu *g;
    struct mig *m;
    nvmlReturn_t rc = enter_device(device, &g, &m);
    if (rc == NVML_SUCCESS && (!id || !m)) rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS) *id = m->ci;
    return leave(rc);
}

EXPORT nvmlReturn_t nvmlDeviceGetAttributes_v2(void *device, nvmlDeviceAttributes_t *attributes) {
    struct gpu *g;
    struct mig *m;
    nvmlReturn_t rc = enter_device(device, &g, &m);
    if (rc == NVML_SUCCESS && !attributes) rc = NVML_ERROR_INVALID_ARGUMENT;
    /* The real call only answers for MIG device handles. */
    if (rc == NVML_SUCCESS && !m) rc = NVML_ERROR_NOT_SUPPORTED;
    if (rc == NVML_SUCCESS) {
        memset(attributes, 0, sizeof *attributes);
        attributes->multiprocessorCount = 14 * m->cislices; /* an A100 GPC */
        attributes->sharedCopyEngineCount = m->gislices;
        attributes->sharedDecoderCount = m->gislices / 2;
        attributes->gpuInstanceSliceCount = m->gislices;
        attributes->computeInstanceSliceCount = m->cislices;
        attributes->memorySizeMB = m->memory;
    }
    return leave(rc);
}

static struct mig *find_gpu_instance(struct gpu *g, unsigned int id) {
    for (int i = 0; i < MAX_MIGS; i++)
        if (g->migs[i].present && g->migs[i].gi == id) return &g->migs[i];
    return NULL;
}

EXPORT nvmlReturn_t nvmlDeviceGetGpuInstanceById(void *device, unsigned int id, void **instance) {
    struct gpu *g;
    struct mig *m;
    nvmlReturn_t rc = enter_device(device, &g, &m);
    if (rc == NVML_SUCCESS && (!instance || m || id >= MAX_GIS)) rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS && !g->mig) rc = NVML_ERROR_NOT_SUPPORTED;
    if (rc == NVML_SUCCESS && !find_gpu_instance(g, id)) rc = NVML_ERROR_NOT_FOUND;
    if (rc == NVML_SUCCESS) *instance = &gi_handles[g - st.gpus][id];
    return leave(rc);
}

EXPORT nvmlReturn_t nvmlGpuInstanceGetInfo(void *instance, nvmlGpuInstanceInfo_t *info) {
    struct gi_handle *h = instance;
    nvmlReturn_t rc = enter();
    int valid = WITHIN(h, gi_handles);
    if (rc == NVML_SUCCESS && (!info || !valid || !in_range(h->gpu, st.ngpus)))
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc != NVML_SUCCESS) return leave(rc);
    struct gpu *g = &st.gpus[h->gpu];
    struct mig *m = find_gpu_instance(g, h->gi);
    if (g->lost) return leave(NVML_ERROR_GPU_IS_LOST);
    if (!m) return leave(NVML_ERROR_INVALID_ARGUMENT);
    info->device = &gpu_handles[h->gpu];
    info->id = m->gi;
    info->profileId = m->profile;
    info->placement.start = m->start;
    info->placement.size = m->size;
    return leave(NVML_SUCCESS);
}

/* ---- NVLink ---- */

static nvmlReturn_t enter_link(void *device, unsigned int link, struct link **out) {
    struct gpu *g;
    struct mig *m;
    nvmlReturn_t rc = enter_device(device, &g, &m);
    if (rc != NVML_SUCCESS) return rc;
    if (m) return NVML_ERROR_INVALID_ARGUMENT;
    if (g->links == 0) return NVML_ERROR_NOT_SUPPORTED;
    if (link >= (unsigned int)g->links) return NVML_ERROR_INVALID_ARGUMENT;
    *out = &g->link[link];
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetNvLinkState(void *device, unsigned int link, unsigned int *active) {
    struct link *k;
    nvmlReturn_t rc = enter_link(device, link, &k);
    if (rc == NVML_SUCCESS && !active) rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS) *active = (unsigned int)k->present;
    return leave(rc);
}

EXPORT nvmlReturn_t nvmlDeviceGetNvLinkRemotePciInfo_v2(void *device, unsigned int link,
                                                        nvmlPciInfo_t *pci) {
    struct link *k;
    nvmlReturn_t rc = enter_link(device, link, &k);
    if (rc == NVML_SUCCESS && (!pci || !k->present)) rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS) fill_pci(pci, k->bus, k->type == 2 ? 0x1AF110DE : 0x20B010DE);
    return leave(rc);
}

EXPORT nvmlReturn_t nvmlDeviceGetNvLinkRemoteDeviceType(void *device, unsigned int link,
                                                        unsigned int *type) {
    struct link *k;
    nvmlReturn_t rc = enter_link(device, link, &k);
    if (rc == NVML_SUCCESS && (!type || !k->present)) rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS) *type = (unsigned int)k->type;
    return leave(rc);
}

/* ---- events ---- */

EXPORT nvmlReturn_t nvmlDeviceGetSupportedEventTypes(void *device, unsigned long long *types) {
    struct gpu *g;
    struct mig *m;
    nvmlReturn_t rc = enter_device(device, &g, &m);
    if (rc == NVML_SUCCESS && !types) rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS) *types = EVENTS_SUPPORTED;
    return leave(rc);
}

EXPORT nvmlReturn_t nvmlEventSetCreate(void **set) {
    nvmlReturn_t rc = enter();
    if (rc == NVML_SUCCESS && !set) rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc != NVML_SUCCESS) return leave(rc);
    for (int i = 0; i < MAX_EVENT_SETS; i++) {
        if (event_sets[i].used) continue;
        memset(&event_sets[i], 0, sizeof event_sets[i]);
        event_sets[i].used = 1;
        event_sets[i].delivered = max_xid_seq(); /* only later events are delivered */
        *set = &event_sets[i];
        return leave(NVML_SUCCESS);
    }
    return leave(NVML_ERROR_UNKNOWN);
}

static struct event_set *as_event_set(void *set) {
    struct event_set *s = set;
    return WITHIN(s, event_sets) && s->used ? s : NULL;
}

EXPORT nvmlReturn_t nvmlDeviceRegisterEvents(void *device, unsigned long long types, void *set) {
    struct gpu *g;
    struct mig *m;
    struct event_set *s = as_event_set(set);
    nvmlReturn_t rc = enter_device(device, &g, &m);
    if (rc == NVML_SUCCESS && (!s || m)) rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS && (types & ~EVENTS_SUPPORTED)) rc = NVML_ERROR_NOT_SUPPORTED;
    if (rc == NVML_SUCCESS) s->registered[g - st.gpus] |= types;
    return leave(rc);
}

/* The next undelivered XID for this set, or NULL. Lock held. */
static struct xid *next_xid(struct event_set *s) {
    struct xid *best = NULL;
    for (int i = 0; i < st.nxids; i++) {
        struct xid *x = &st.xids[i];
        if (x->seq > s->delivered && (!best || x->seq < best->seq)) best = x;
    }
    return best;
}

EXPORT nvmlReturn_t nvmlEventSetWait_v2(void *set, nvmlEventData_t *data, unsigned int timeout_ms) {
    struct timespec start, now, step = {0, 1000000}; /* re-read the topology every ms */
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        nvmlReturn_t rc = enter();
        struct event_set *s = as_event_set(set);
        if (rc == NVML_SUCCESS && (!s || !data)) rc = NVML_ERROR_INVALID_ARGUMENT;
        if (rc != NVML_SUCCESS) return leave(rc);
        if (st.wait_error) return leave(st.wait_error);
        for (struct xid *x = next_xid(s); x; x = next_xid(s)) {
            s->delivered = x->seq;
            if (!in_range(x->gpu, MAX_GPUS) || !(s->registered[x->gpu] & EVENT_XID_CRITICAL)) continue;
            memset(data, 0, sizeof *data);
            data->device = &gpu_handles[x->gpu];
            data->eventType = EVENT_XID_CRITICAL;
            data->eventData = x->xid;
            data->gpuInstanceId = x->gi < 0 ? ID_NONE : (unsigned int)x->gi;
            data->computeInstanceId = x->ci < 0 ? ID_NONE : (unsigned int)x->ci;
            return leave(NVML_SUCCESS);
        }
        leave(NVML_SUCCESS);
        clock_gettime(CLOCK_MONOTONIC, &now);
        long long waited_ms = (now.tv_sec - start.tv_sec) * 1000LL +
                              (now.tv_nsec - start.tv_nsec) / 1000000LL;
        if (waited_ms >= (long long)timeout_ms) return NVML_ERROR_TIMEOUT;
        nanosleep(&step, NULL);
    }
}

EXPORT nvmlReturn_t nvmlEventSetFree(void *set) {
    nvmlReturn_t rc = enter();
    struct event_set *s = as_event_set(set);
    if (rc == NVML_SUCCESS && !s) rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS) s->used = 0;
    return leave(rc);
}

/* ---- not NVML: lets the tests check the layouts against the binding's ---- */

EXPORT long fake_nvml_struct_size(const char *name) {
    if (!strcmp(name, "nvmlPciInfo_t")) return (long)sizeof(nvmlPciInfo_t);
    if (!strcmp(name, "c_nvmlMemory_t")) return (long)sizeof(nvmlMemory_t);
    if (!strcmp(name, "c_nvmlUtilization_t")) return (long)sizeof(nvmlUtilization_t);
    if (!strcmp(name, "c_nvmlProcessInfo_v3_t")) return (long)sizeof(nvmlProcessInfo_t);
    if (!strcmp(name, "c_nvmlEventData_t")) return (long)sizeof(nvmlEventData_t);
    if (!strcmp(name, "c_nvmlDeviceAttributes")) return (long)sizeof(nvmlDeviceAttributes_t);
    if (!strcmp(name, "c_nvmlGpuInstanceInfo_t")) return (long)sizeof(nvmlGpuInstanceInfo_t);
    return -1;
}
