// Block gather / scatter between the engine's paged layout and the tiers'
// contiguous layout, as one launch over a list of copy segments.
//
// A segment is one contiguous byte range: (src[i], dst[i], len[i]). The host side
// (tierkv-cuda's `segments` module) turns a block list and a registered layout into
// segments: for every block, one segment per layer tensor (K and V separate, or
// fused, whatever the engine registered). Pointers are device addresses; pinned
// host memory is reached through its device mapping, so the same kernel serves
// device -> device, host -> device and device -> host.
//
// Semantics (identical to `reference::copy_segments`): for each i, copy len[i]
// bytes from src[i] to dst[i]; segments must not overlap each other's
// destinations, and no destination may overlap any source.
//
// Grid: one thread block per segment (grid-stride over segments when there are
// more segments than blocks); the block's threads stride over the segment,
// 16 bytes at a time when src, dst and len are all 16-byte aligned, else bytes.

extern "C" __global__ void tierkv_copy_segments(
    const unsigned long long* __restrict__ src,
    const unsigned long long* __restrict__ dst,
    const unsigned long long* __restrict__ len,
    unsigned int n)
{
    for (unsigned int s = blockIdx.x; s < n; s += gridDim.x) {
        const unsigned long long a = src[s];
        const unsigned long long b = dst[s];
        const unsigned long long l = len[s];
        if (((a | b | l) & 15ull) == 0ull) {
            const uint4* from = reinterpret_cast<const uint4*>(a);
            uint4* to = reinterpret_cast<uint4*>(b);
            const unsigned long long words = l >> 4;
            for (unsigned long long w = threadIdx.x; w < words; w += blockDim.x) {
                to[w] = from[w];
            }
        } else {
            const unsigned char* from = reinterpret_cast<const unsigned char*>(a);
            unsigned char* to = reinterpret_cast<unsigned char*>(b);
            for (unsigned long long k = threadIdx.x; k < l; k += blockDim.x) {
                to[k] = from[k];
            }
        }
    }
}
