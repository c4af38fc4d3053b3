/*
 * Shared declarations of the fake NVML library: the binding's structures, the
 * parsed topology and the limits. See topology.c for the file format and api.c
 * for the NVML entry points.
 */
#ifndef FAKENVML_H
#define FAKENVML_H

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define EXPORT __attribute__((visibility("default")))
#define TOPOLOGY_ENV "DS01_FAKE_NVML_TOPOLOGY"

typedef int nvmlReturn_t;
enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_TIMEOUT = 10,
    NVML_ERROR_GPU_IS_LOST = 15,
    NVML_ERROR_UNKNOWN = 999,
};

#define EVENT_XID_CRITICAL 0x8ULL
/* What an A100 supports: ECC single/double bit, P-state, XID, clock. */
#define EVENTS_SUPPORTED 0x1FULL
#define ID_NONE 0xFFFFFFFFu
#define VALUE_NOT_AVAILABLE 0xFFFFFFFFFFFFFFFFULL
#define MIB (1024ULL * 1024ULL)

#define MAX_GPUS 32
#define MAX_MIGS 8   /* MIG devices per GPU (7 on A100/H100) */
#define MAX_GIS 16   /* GPU instance ids per GPU */
#define MAX_LINKS 36 /* NVML_NVLINK_MAX_LINKS of the binding */
#define MAX_PROCS 4096
#define MAX_XIDS 1024
#define MAX_EVENT_SETS 16
#define TEXT 96 /* NVML_DEVICE_UUID_V2_BUFFER_SIZE, NVML_DEVICE_NAME_V2_BUFFER_SIZE */

/* ---- the binding's structures (pynvml.py, same field order and types) ---- */

typedef struct {
    char busIdLegacy[16];
    unsigned int domain, bus, device, pciDeviceId, pciSubSystemId;
    char busId[32];
} nvmlPciInfo_t;

typedef struct {
    unsigned long long total, free, used;
} nvmlMemory_t;

typedef struct {
    unsigned int gpu, memory;
} nvmlUtilization_t;

typedef struct { /* c_nvmlProcessInfo_v3_t (= _v2_t) */
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId, computeInstanceId;
} nvmlProcessInfo_t;

typedef struct { /* c_nvmlEventData_t */
    void *device;
    unsigned long long eventType, eventData;
    unsigned int gpuInstanceId, computeInstanceId;
} nvmlEventData_t;

typedef struct { /* c_nvmlDeviceAttributes */
    unsigned int multiprocessorCount, sharedCopyEngineCount, sharedDecoderCount;
    unsigned int sharedEncoderCount, sharedJpegCount, sharedOfaCount;
    unsigned int gpuInstanceSliceCount, computeInstanceSliceCount;
    unsigned long long memorySizeMB;
} nvmlDeviceAttributes_t;

typedef struct {
    unsigned int start, size;
} nvmlGpuInstancePlacement_t;

typedef struct { /* c_nvmlGpuInstanceInfo_t */
    void *device;
    unsigned int id, profileId;
    nvmlGpuInstancePlacement_t placement;
} nvmlGpuInstanceInfo_t;

/* ---- the topology, as parsed ---- */

struct mig {
    int present;
    char uuid[TEXT], name[TEXT];
    unsigned int gi, ci, profile, gislices, cislices, start, size;
    unsigned long long memory, used; /* MiB */
};

struct link {
    int present, type;
    char bus[32];
};

struct gpu {
    int present;
    char uuid[TEXT], name[TEXT], bus[32];
    unsigned int minor, pciid;
    unsigned long long memory, used; /* MiB */
    int util, memutil, migcapable, mig, migmax, lost, links;
    struct link link[MAX_LINKS];
    struct mig migs[MAX_MIGS];
};

struct proc {
    unsigned int pid;
    int gpu, gi, ci;
    long long used; /* MiB, -1: not available */
};

struct xid {
    unsigned long long seq, xid;
    int gpu, gi, ci;
};

struct topology {
    char driver[80];
    int wait_error, ngpus, nprocs, nxids;
    struct gpu gpus[MAX_GPUS];
    struct proc procs[MAX_PROCS];
    struct xid xids[MAX_XIDS];
};

/* The current topology; read and written only with api.c's lock held. */
extern struct topology st;

/* Re-read the topology file if it changed since the last call. Lock held. */
nvmlReturn_t fake_reload(void);

static inline int in_range(long long value, long long limit) { return value >= 0 && value < limit; }

#endif
