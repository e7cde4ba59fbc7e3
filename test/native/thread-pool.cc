// The CPU thread pool (native/common/thread_pool.cc): every parallel_for covers its range exactly once
// whether workers spin or sleep between loops, with more threads than CPUs, and through destruction; loops
// go on when a worker is held (the others claim its chunks); and the default thread count read from fake
// /proc and /sys trees (cgroup v1 / v2 quotas, SMT).
// Prints "pool ok" when every check passes.
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "native/common/thread_pool.h"

static int failures = 0;
#define CHECK(cond, ...)                        \
  do {                                          \
    if (!(cond)) {                              \
      std::printf("FAIL %s: ", #cond);          \
      std::printf(__VA_ARGS__);                 \
      std::printf("\n");                        \
      ++failures;                               \
    }                                           \
  } while (0)

static void write(const std::string& root, const std::string& rel, const std::string& text) {
  std::string path = root + "/" + rel;
  for (size_t i = 1; i < path.size(); ++i)
    if (path[i] == '/') mkdir(path.substr(0, i).c_str(), 0755);
  std::ofstream(path) << text;
}

static void check_pool(int threads, const char* spin_us) {
  setenv("LLAMA2_CPU_SPIN_US", spin_us, 1);
  std::mt19937 rng(threads * 131 + spin_us[0]);
  {
    l2::ThreadPool pool(threads);
    CHECK(pool.size() == threads, "size %d want %d", pool.size(), threads);
    std::vector<std::atomic<int>> hits(4096);
    for (int iter = 0; iter < 3000; ++iter) {
      const int64_t n = rng() % 4096, grain = 1 + rng() % 64;
      for (int64_t i = 0; i < n; ++i) hits[i].store(0);
      std::atomic<int> calls{0};
      pool.parallel_for(n, grain, [&](int64_t b, int64_t e) {
        calls.fetch_add(1);
        if (b < 0 || e > n || b >= e) return (void)hits[0].fetch_add(1000);
        for (int64_t i = b; i < e; ++i) hits[i].fetch_add(1);
      });
      bool ok = true;
      for (int64_t i = 0; i < n; ++i) ok = ok && hits[i].load() == 1;
      CHECK(ok, "threads %d spin %s iter %d: range %lld grain %lld not covered exactly once", threads, spin_us, iter, (long long)n,
            (long long)grain);
      CHECK(calls.load() <= threads && (n == 0 || calls.load() >= 1), "threads %d: %d calls", threads, calls.load());
      // Now and then a pause longer than the spin, so workers (and the caller) also go through their sleep.
      if (iter % 500 == 499) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  }  // destruction with workers spinning or asleep must return
}

// A worker held (spinning in a signal handler, as if descheduled) between loops: the caller claims every
// chunk and the loops finish. The static one-chunk-per-worker pool waited for it here (alarm ends that).
static std::atomic<bool> held{false}, let_go{false};
static void hold(int) {
  held.store(true);
  while (!let_go.load()) {
  }
}

static void check_held_worker() {
  // A long spin: the worker holds no lock between loops, so the signal cannot land while it has one.
  setenv("LLAMA2_CPU_SPIN_US", "5000000", 1);
  l2::ThreadPool pool(2);
  const pthread_t caller = pthread_self();
  // The worker's thread: the caller's chunk waits (up to 20 s) for the worker to run the other one; it
  // would claim both at once on a busy machine otherwise.
  pthread_t worker{};
  std::atomic<bool> found{false};
  pool.parallel_for(2, 1, [&](int64_t, int64_t) {
    if (!pthread_equal(pthread_self(), caller)) {
      worker = pthread_self();
      found.store(true);
      return;
    }
    for (int i = 0; i < 20000 && !found.load(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  });
  CHECK(found.load(), "no chunk ran on the worker");
  if (!found) return;
  struct sigaction sa {};
  sa.sa_handler = hold;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGUSR1, &sa, nullptr);
  pthread_kill(worker, SIGUSR1);
  for (int i = 0; i < 5000 && !held.load(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  CHECK(held.load(), "the worker never entered the handler");
  // 500 loops of 256 items: true when each covered every index once; counts the chunks run off the caller.
  std::vector<std::atomic<int>> hits(256);
  std::atomic<int> off_caller{0};
  auto loops = [&] {
    bool ok = true;
    for (int iter = 0; iter < 500; ++iter) {
      for (auto& h : hits) h.store(0);
      pool.parallel_for(256, 1, [&](int64_t b, int64_t e) {
        if (!pthread_equal(pthread_self(), caller)) off_caller.fetch_add(1);
        for (int64_t i = b; i < e; ++i) hits[i].fetch_add(1);
      });
      for (auto& h : hits) ok = ok && h.load() == 1;
    }
    return ok;
  };
  alarm(30);
  bool ok = loops();
  alarm(0);
  CHECK(ok && off_caller.load() == 0, "held worker: covered once %d, chunks off the caller %d", (int)ok, off_caller.load());
  let_go.store(true);
  // Released, it takes part again (and finds no stale chunk to run twice).
  CHECK(loops(), "after release: a range not covered exactly once");
}

int main() {
  for (int t : {1, 2, 3, 8})
    for (const char* spin : {"0", "200"}) check_pool(t, spin);
  check_held_worker();

  char tmpl[] = "/tmp/l2-budget-XXXXXX";
  const std::string root = mkdtemp(tmpl);

  // cgroup v2, quota 1.5 CPUs; 4 CPUs in 2 SMT cores (siblings 0,2 and 1,3).
  std::string a = root + "/a";
  write(a, "proc/self/cgroup", "0::/\n");
  write(a, "sys/fs/cgroup/cpu.max", "150000 100000\n");
  for (int c = 0; c < 4; ++c) write(a, "sys/devices/system/cpu/cpu" + std::to_string(c) + "/topology/core_cpus_list", c % 2 ? "1,3\n" : "0,2\n");
  l2::CpuBudget b = l2::cpu_budget_at(a, {0, 1, 2, 3}, 16);
  CHECK(b.logical == 16 && b.allowed == 4 && b.physical == 2, "a: %d %d %d", b.logical, b.allowed, b.physical);
  CHECK(b.quota > 1.49 && b.quota < 1.51 && b.threads == 2, "a: quota %f threads %d", b.quota, b.threads);

  // cgroup v2 nested: the parent's 1 CPU binds though the leaf says max; thread_siblings_list (older kernels).
  std::string n = root + "/n";
  write(n, "proc/self/cgroup", "0::/app/worker\n");
  write(n, "sys/fs/cgroup/app/cpu.max", "100000 100000\n");
  write(n, "sys/fs/cgroup/app/worker/cpu.max", "max 100000\n");
  for (int c = 0; c < 2; ++c) write(n, "sys/devices/system/cpu/cpu" + std::to_string(c) + "/topology/thread_siblings_list", std::to_string(c) + "\n");
  b = l2::cpu_budget_at(n, {0, 1}, 2);
  CHECK(b.physical == 2 && b.quota > 0.99 && b.quota < 1.01 && b.threads == 1, "n: physical %d quota %f threads %d", b.physical, b.quota, b.threads);

  // cgroup v1 (cpu,cpuacct), 3 CPUs of quota; no topology files: allowed CPUs count.
  std::string v1 = root + "/v1";
  write(v1, "proc/self/cgroup", "12:memory:/docker/x\n3:cpu,cpuacct:/docker/x\n1:name=systemd:/docker/x\n");
  write(v1, "sys/fs/cgroup/cpu,cpuacct/docker/x/cpu.cfs_quota_us", "300000\n");
  write(v1, "sys/fs/cgroup/cpu,cpuacct/docker/x/cpu.cfs_period_us", "100000\n");
  b = l2::cpu_budget_at(v1, {0, 1, 2, 3, 4, 5, 6, 7}, 8);
  CHECK(b.physical == 0 && b.allowed == 8 && b.quota > 2.99 && b.quota < 3.01 && b.threads == 3, "v1: %d %d %f %d", b.physical, b.allowed, b.quota,
        b.threads);

  // cgroup v1 without a quota (-1), SMT pair on one core: 1 thread.
  std::string s = root + "/s";
  write(s, "proc/self/cgroup", "4:cpu:/\n");
  write(s, "sys/fs/cgroup/cpu/cpu.cfs_quota_us", "-1\n");
  write(s, "sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000\n");
  for (int c = 0; c < 2; ++c) write(s, "sys/devices/system/cpu/cpu" + std::to_string(c) + "/topology/core_cpus_list", "0-1\n");
  b = l2::cpu_budget_at(s, {0, 1}, 2);
  CHECK(b.quota == 0 && b.physical == 1 && b.threads == 1, "s: quota %f physical %d threads %d", b.quota, b.physical, b.threads);

  // Nothing readable: the allowed CPUs; an unknown affinity: the logical count.
  b = l2::cpu_budget_at(root + "/missing", {0, 1, 2}, 4);
  CHECK(b.quota == 0 && b.physical == 0 && b.threads == 3, "missing: %f %d %d", b.quota, b.physical, b.threads);
  b = l2::cpu_budget_at(root + "/missing", {}, 4);
  CHECK(b.allowed == 4 && b.threads == 4, "no affinity: %d %d", b.allowed, b.threads);
  CHECK(b.describe().find("4 threads") == 0, "describe: %s", b.describe().c_str());

  std::system(("rm -rf " + root).c_str());
  if (failures == 0) std::printf("pool ok\n");
  return failures == 0 ? 0 : 1;
}
