// RoPE re-rotation of cached keys by a position delta, for semantic reuse: a key
// computed at position p and reused at position p + d is rotated by d (rotations
// compose: R(p + d) = R(d) R(p)), so it equals the key computed at p + d.
//
// Layout: keys[token][head][dim], contiguous, `dim` = head size. Only the first
// `rot_dim` dims rotate (partial rotary); the rest are left as they are.
// Pairing (`neox`):
//   neox = 1 (Llama, SmolLM2, Qwen: "rotate_half"): pair (i, i + rot_dim/2)
//   neox = 0 (GPT-J style, interleaved):           pair (2i, 2i + 1)
// Frequency of pair i: inv_freq[i] (supplied by the host: base^(-2i/rot_dim),
// possibly scaled, exactly as the model computes it). Angle = delta[token] * inv_freq[i],
// computed in fp32; the rotation is applied in fp32 and rounded back to the
// element type (dtype 0 = fp32, 1 = fp16, 2 = bf16, round to nearest even).
//
// Semantics are those of `reference::rerotate_keys`. One thread per (token, head,
// pair), grid-stride.

__device__ __forceinline__ float load_elem(const void* p, unsigned long long i, int dtype) {
    if (dtype == 0) {
        return reinterpret_cast<const float*>(p)[i];
    }
    unsigned short h = reinterpret_cast<const unsigned short*>(p)[i];
    if (dtype == 1) {
        float f;
        asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
        return f;
    }
    return __uint_as_float(((unsigned int)h) << 16);
}

__device__ __forceinline__ void store_elem(void* p, unsigned long long i, int dtype, float f) {
    if (dtype == 0) {
        reinterpret_cast<float*>(p)[i] = f;
        return;
    }
    unsigned short h;
    if (dtype == 1) {
        asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    } else {
        unsigned int u = __float_as_uint(f);
        if ((u & 0x7fffffffu) > 0x7f800000u) {
            h = (unsigned short)((u >> 16) | 0x40u); // NaN stays NaN
        } else {
            u += 0x7fffu + ((u >> 16) & 1u); // round to nearest even
            h = (unsigned short)(u >> 16);
        }
    }
    reinterpret_cast<unsigned short*>(p)[i] = h;
}

extern "C" __global__ void tierkv_rerotate_keys(
    void* keys,
    const int* __restrict__ delta,
    const float* __restrict__ inv_freq,
    unsigned int tokens,
    unsigned int heads,
    unsigned int dim,
    unsigned int rot_dim,
    int neox,
    int dtype)
{
    const unsigned int half = rot_dim / 2;
    const unsigned long long total = (unsigned long long)tokens * heads * half;
    for (unsigned long long t = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         t < total;
         t += (unsigned long long)gridDim.x * blockDim.x) {
        const unsigned int i = (unsigned int)(t % half);
        const unsigned long long th = t / half; // token * heads + head
        const unsigned int token = (unsigned int)(th / heads);
        const unsigned long long base = th * dim;
        const unsigned long long ia = base + (neox ? i : 2 * i);
        const unsigned long long ib = base + (neox ? i + half : 2 * i + 1);
        const float angle = (float)delta[token] * inv_freq[i];
        float s, c;
        sincosf(angle, &s, &c);
        const float x = load_elem(keys, ia, dtype);
        const float y = load_elem(keys, ib, dtype);
        store_elem(keys, ia, dtype, x * c - y * s);
        store_elem(keys, ib, dtype, x * s + y * c);
    }
}
