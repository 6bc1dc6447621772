"""A CUDA matmul with nothing but the standard library: run inside a sandbox given an NVIDIA GPU.

The driver's ``libcuda`` (which turbok's ``gpu.nvidia.com`` driver mounts into the container) is called
through ctypes: a PTX kernel (a naive float32 matmul) is JIT-compiled by the driver, run on two N x N
matrices, and its result compared with the same product computed here in Python. Prints one line,
``matmul N=<n> max_error=<e> kernel_ms=<t> device=<name>``, and exits 0 when the error is small; any CUDA
error is printed with its name and exits 1. Read by tests/integration/node/test_dra_gvisor.py, which runs
it as ``python3 -c`` (no CUDA toolkit, no image with one: none is needed).
"""

import ctypes
import glob
import os
import random
import sys
import time

N = 64
PTX = rb"""
.version 7.0
.target sm_52
.address_size 64

.visible .entry matmul(.param .u64 pa, .param .u64 pb, .param .u64 pc, .param .u32 pn)
{
    .reg .pred %p<3>;
    .reg .b32 %r<12>;
    .reg .f32 %f<4>;
    .reg .b64 %rd<10>;

    ld.param.u64 %rd1, [pa];
    ld.param.u64 %rd2, [pb];
    ld.param.u64 %rd3, [pc];
    ld.param.u32 %r1, [pn];
    cvta.to.global.u64 %rd1, %rd1;
    cvta.to.global.u64 %rd2, %rd2;
    cvta.to.global.u64 %rd3, %rd3;
    mov.u32 %r2, %ctaid.y;
    mov.u32 %r3, %ntid.y;
    mov.u32 %r4, %tid.y;
    mad.lo.s32 %r5, %r2, %r3, %r4;
    mov.u32 %r2, %ctaid.x;
    mov.u32 %r3, %ntid.x;
    mov.u32 %r4, %tid.x;
    mad.lo.s32 %r6, %r2, %r3, %r4;
    setp.ge.s32 %p1, %r5, %r1;
    setp.ge.s32 %p2, %r6, %r1;
    or.pred %p1, %p1, %p2;
    @%p1 bra DONE;
    mov.f32 %f1, 0f00000000;
    mov.u32 %r7, 0;
    mul.lo.s32 %r8, %r5, %r1;
LOOP:
    setp.ge.s32 %p2, %r7, %r1;
    @%p2 bra STORE;
    add.s32 %r9, %r8, %r7;
    mul.wide.s32 %rd4, %r9, 4;
    add.s64 %rd5, %rd1, %rd4;
    ld.global.f32 %f2, [%rd5];
    mad.lo.s32 %r10, %r7, %r1, %r6;
    mul.wide.s32 %rd6, %r10, 4;
    add.s64 %rd7, %rd2, %rd6;
    ld.global.f32 %f3, [%rd7];
    fma.rn.f32 %f1, %f2, %f3, %f1;
    add.s32 %r7, %r7, 1;
    bra LOOP;
STORE:
    add.s32 %r11, %r8, %r6;
    mul.wide.s32 %rd8, %r11, 4;
    add.s64 %rd9, %rd3, %rd8;
    st.global.f32 [%rd9], %f1;
DONE:
    ret;
}
""" + b"\0"


def load_cuda():
    # The container's loader cache does not know the mounted driver libraries: open them by path, and let
    # libcuda's own dlopen of the PTX JIT compiler find it through LD_LIBRARY_PATH. TURBOK_LIBCUDA names the
    # library outright (tests/unit/node/dra/test_cuda_matmul.py: a stand-in that computes on the CPU).
    if os.environ.get("TURBOK_LIBCUDA"):
        return ctypes.CDLL(os.environ["TURBOK_LIBCUDA"])
    dirs = ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib")
    os.environ["LD_LIBRARY_PATH"] = ":".join([*dirs, os.environ.get("LD_LIBRARY_PATH", "")])
    for d in dirs:
        for path in sorted(glob.glob(f"{d}/libcuda.so*"), key=len):
            return ctypes.CDLL(path)
    sys.exit("no libcuda.so in " + ", ".join(dirs))


def main():
    cuda = load_cuda()

    def check(result, what):
        if result != 0:
            name = ctypes.c_char_p()
            cuda.cuGetErrorName(result, ctypes.byref(name))
            sys.exit(f"{what}: CUDA error {result} {(name.value or b'?').decode()}")

    check(cuda.cuInit(0), "cuInit")
    device = ctypes.c_int()
    check(cuda.cuDeviceGet(ctypes.byref(device), 0), "cuDeviceGet")
    name = ctypes.create_string_buffer(256)
    check(cuda.cuDeviceGetName(name, 256, device), "cuDeviceGetName")
    context = ctypes.c_void_p()  # the device's primary context: the same calls since CUDA 7
    check(cuda.cuDevicePrimaryCtxRetain(ctypes.byref(context), device), "cuDevicePrimaryCtxRetain")
    check(cuda.cuCtxSetCurrent(context), "cuCtxSetCurrent")
    module = ctypes.c_void_p()
    check(cuda.cuModuleLoadData(ctypes.byref(module), ctypes.c_char_p(PTX)), "cuModuleLoadData (PTX JIT)")
    kernel = ctypes.c_void_p()
    check(cuda.cuModuleGetFunction(ctypes.byref(kernel), module, b"matmul"), "cuModuleGetFunction")

    rng = random.Random(17)
    a = [rng.uniform(-1, 1) for _ in range(N * N)]
    b = [rng.uniform(-1, 1) for _ in range(N * N)]
    host_a, host_b = (ctypes.c_float * (N * N))(*a), (ctypes.c_float * (N * N))(*b)
    host_c = (ctypes.c_float * (N * N))()
    size = ctypes.sizeof(host_a)
    dev = [ctypes.c_uint64() for _ in range(3)]
    for d in dev:
        check(cuda.cuMemAlloc_v2(ctypes.byref(d), ctypes.c_size_t(size)), "cuMemAlloc")
    check(cuda.cuMemcpyHtoD_v2(dev[0], host_a, ctypes.c_size_t(size)), "cuMemcpyHtoD")
    check(cuda.cuMemcpyHtoD_v2(dev[1], host_b, ctypes.c_size_t(size)), "cuMemcpyHtoD")
    n = ctypes.c_uint32(N)
    args = (ctypes.c_void_p * 4)(*(ctypes.addressof(x) for x in (*dev, n)))  # a pointer to each argument
    block = 16
    grid = (N + block - 1) // block
    start = time.perf_counter()
    check(cuda.cuLaunchKernel(kernel, grid, grid, 1, block, block, 1, 0, None, args, None), "cuLaunchKernel")
    check(cuda.cuCtxSynchronize(), "cuCtxSynchronize")
    kernel_ms = (time.perf_counter() - start) * 1e3
    check(cuda.cuMemcpyDtoH_v2(host_c, dev[2], ctypes.c_size_t(size)), "cuMemcpyDtoH")
    error = max(abs(host_c[i * N + j] - sum(a[i * N + k] * b[k * N + j] for k in range(N)))
                for i in range(N) for j in range(N))
    for d in dev:
        cuda.cuMemFree_v2(d)
    print(f"matmul N={N} max_error={error:.2e} kernel_ms={kernel_ms:.3f} device={name.value.decode()}")
    sys.exit(0 if error < 1e-3 else 1)


if __name__ == "__main__":
    main()
