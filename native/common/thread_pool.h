// A fixed pool of worker threads running one parallel loop at a time (the CPU backend's only form of
// parallelism). The calling thread takes part, so a pool of size 1 runs everything inline.
//
// A decode step of a small model is hundreds of loops of a few microseconds each, so handing a loop
// out must cost far less than a condition-variable wake-up (tens of microseconds on a VM). Between
// loops, workers spin on an atomic generation counter for a short while (LLAMA2_CPU_SPIN_US, default
// 200 us) before they sleep, and the caller spins for their completion the same way. Spinning is off
// when the pool has more threads than the process may run on (it would steal the CPUs the others need).
//
// A loop is cut into at most size() chunks (the same cut whoever runs them, so results do not depend on
// scheduling), and every thread, the caller included, claims chunks until none is left. So a worker that
// is descheduled or slow to wake costs its chunk's time, not a scheduler time slice: with the CPUs shared
// with other busy processes, static one-chunk-per-worker loops made small-model steps ~100x slower.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace l2 {

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  int size() const { return (int)workers_.size() + 1; }
  // Calls fn(begin, end) on disjoint chunks covering [0, n); returns when all are done.
  // Chunks are at least `grain` long. fn must not throw. One caller at a time.
  void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

 private:
  void worker_loop();
  void run_chunks(uint32_t gen);  // claims and runs the chunks of loop `gen` until none is left
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_start_, cv_done_;
  // Written by the caller before it publishes a loop in state_; read by a thread only after it has
  // claimed a chunk of that loop (the caller cannot publish the next one before that chunk is done).
  const std::function<void(int64_t, int64_t)>* job_ = nullptr;
  int64_t job_n_ = 0, job_chunk_ = 0;
  // The loop's generation (bits 63..32; equality only, so wrapping is harmless), its chunk count (31..16)
  // and the next unclaimed chunk (15..0), in one word so that a claim is one compare-exchange that fails
  // once the loop it was read for is over.
  std::atomic<uint64_t> state_{0};
  std::atomic<int> done_{0};              // chunks of the current loop finished
  std::atomic<int> sleepers_{0};          // workers blocked on cv_start_
  std::atomic<bool> caller_sleeping_{false};
  std::atomic<bool> stop_{false};
  int64_t spin_ns_ = 0;
};

// The CPU facts the default thread count comes from (Linux; elsewhere only `logical`).
struct CpuBudget {
  int logical = 1;       // std::thread::hardware_concurrency()
  int allowed = 1;       // CPUs in this process's affinity mask (taskset, cpuset)
  int physical = 0;      // distinct cores among them (SMT siblings counted once); 0 = unknown
  double quota = 0;      // cgroup CPU quota in CPUs (cpu.max / cfs_quota_us); 0 = none
  int threads = 1;       // the default: physical (or allowed) cores, capped by the quota, at least 1
  std::string describe() const;
};
CpuBudget cpu_budget();  // this process's, computed once
// The same from a file-system root ("" in production; a fake tree in test/native/cpu-budget.cc) holding
// proc/self/cgroup, sys/fs/cgroup/... and sys/devices/system/cpu/cpuN/topology/, for the given usable CPUs.
CpuBudget cpu_budget_at(const std::string& root, const std::vector<int>& allowed, int logical);
// Threads for a pool: `requested` when > 0, else cpu_budget().threads.
int default_threads(int requested = 0);

}  // namespace l2
