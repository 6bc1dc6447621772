/* A stand-in for the CUDA driver's libcuda with the calls tests/integration/node/cuda_matmul.py makes: memory is
 * the host's and cuLaunchKernel runs the matmul on the CPU, after checking the kernel parameters as the real
 * driver would read them (an array of pointers to each argument: three CUdeviceptr, one unsigned int) and that
 * the launch covers the matrix. It proves the script's host side (ctypes types, parameter layout, copies, error
 * names), not the PTX, which only a real driver compiles. Built by tests/unit/node/dra/test_cuda_matmul.py. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult;
enum { OK = 0, INVALID_VALUE = 1, NOT_INITIALIZED = 3, INVALID_IMAGE = 200, NOT_FOUND = 500 };
static int initialized;
static int module_ok;

CUresult cuGetErrorName(CUresult e, const char **name) {
    *name = e == INVALID_VALUE ? "CUDA_ERROR_INVALID_VALUE" : e == NOT_INITIALIZED ? "CUDA_ERROR_NOT_INITIALIZED"
          : e == INVALID_IMAGE ? "CUDA_ERROR_INVALID_IMAGE" : e == NOT_FOUND ? "CUDA_ERROR_NOT_FOUND" : "CUDA_SUCCESS";
    return OK;
}
CUresult cuInit(unsigned int flags) { if (flags) return INVALID_VALUE; initialized = 1; return OK; }
CUresult cuDeviceGet(int *dev, int ordinal) { if (!initialized) return NOT_INITIALIZED; *dev = ordinal; return ordinal ? INVALID_VALUE : OK; }
CUresult cuDeviceGetName(char *name, int len, int dev) { if (dev) return INVALID_VALUE; strncpy(name, "Stand-in GPU", len); return OK; }
CUresult cuDevicePrimaryCtxRetain(void **ctx, int dev) { *ctx = (void *)0x1; return dev ? INVALID_VALUE : OK; }
CUresult cuCtxSetCurrent(void *ctx) { return ctx == (void *)0x1 ? OK : INVALID_VALUE; }
CUresult cuModuleLoadData(void **module, const void *image) {
    const char *ptx = image;
    if (!strstr(ptx, ".visible .entry matmul(") || !strstr(ptx, ".target sm_")) return INVALID_IMAGE;
    module_ok = 1; *module = (void *)0x2; return OK;
}
CUresult cuModuleGetFunction(void **fn, void *module, const char *name) {
    if (module != (void *)0x2 || strcmp(name, "matmul")) return NOT_FOUND;
    *fn = (void *)0x3; return OK;
}
CUresult cuMemAlloc_v2(uint64_t *ptr, size_t size) { *ptr = (uint64_t)(uintptr_t)malloc(size); return *ptr ? OK : INVALID_VALUE; }
CUresult cuMemFree_v2(uint64_t ptr) { free((void *)(uintptr_t)ptr); return OK; }
CUresult cuMemcpyHtoD_v2(uint64_t dst, const void *src, size_t n) { memcpy((void *)(uintptr_t)dst, src, n); return OK; }
CUresult cuMemcpyDtoH_v2(void *dst, uint64_t src, size_t n) { memcpy(dst, (void *)(uintptr_t)src, n); return OK; }
CUresult cuLaunchKernel(void *fn, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned shared, void *stream, void **params, void **extra) {
    if (fn != (void *)0x3 || !params || extra || shared || stream || gz != 1 || bz != 1) return INVALID_VALUE;
    const float *a = (const float *)(uintptr_t)*(uint64_t *)params[0];
    const float *b = (const float *)(uintptr_t)*(uint64_t *)params[1];
    float *c = (float *)(uintptr_t)*(uint64_t *)params[2];
    unsigned n = *(unsigned *)params[3];
    if (gx * bx < n || gy * by < n) return INVALID_VALUE;
    for (unsigned i = 0; i < n; i++)
        for (unsigned j = 0; j < n; j++) {
            float s = 0;
            for (unsigned k = 0; k < n; k++) s += a[i * n + k] * b[k * n + j];
            c[i * n + j] = s;
        }
    return OK;
}
CUresult cuCtxSynchronize(void) { return OK; }
