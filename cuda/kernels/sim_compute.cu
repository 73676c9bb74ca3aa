// Simulated compute for overlap measurements (benchmark only): one thread spins
// for `cycles` SM clock cycles, occupying the stream it runs on without using
// memory bandwidth or the copy engines. The transfer benchmark calibrates cycles
// per microsecond on the device and stands one launch in for one layer's
// forward pass while the next layer's KV is copied on tierkv's copy stream.

extern "C" __global__ void tierkv_sim_compute(long long cycles)
{
    const long long start = clock64();
    while (clock64() - start < cycles) {
    }
}
