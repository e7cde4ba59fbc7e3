#include "thread_pool.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#if defined(__linux__)
#include <sched.h>
#endif

namespace l2 {

namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Spins until done() or spin_ns have passed; true when done() became true.
template <typename Done>
bool spin_until(Done done, int64_t spin_ns) {
  if (spin_ns <= 0) return done();
  const int64_t deadline = now_ns() + spin_ns;
  for (int i = 1;; ++i) {
    if (done()) return true;
    cpu_relax();
    if ((i & 63) == 0) {
      if (now_ns() > deadline) return done();
      std::this_thread::yield();  // lets a runnable thread on this CPU in (another process's, or ours when oversubscribed)
    }
  }
}

std::vector<int> allowed_cpus() {
  std::vector<int> out;
#if defined(__linux__)
  for (int bits = 1024; bits <= (1 << 16); bits *= 4) {
    cpu_set_t* set = CPU_ALLOC(bits);
    if (!set) break;
    const size_t size = CPU_ALLOC_SIZE(bits);
    CPU_ZERO_S(size, set);
    if (sched_getaffinity(0, size, set) == 0) {
      for (int c = 0; c < bits; ++c)
        if (CPU_ISSET_S(c, size, set)) out.push_back(c);
      CPU_FREE(set);
      return out;
    }
    CPU_FREE(set);
  }
#endif
  return out;
}

bool read_file(const std::string& path, std::string& out) {
  std::ifstream f(path);
  if (!f) return false;
  std::stringstream ss;
  ss << f.rdbuf();
  out = ss.str();
  return true;
}

// "0-3,8,10-11\n" -> its first CPU (the core's id when the list is a core's SMT siblings); -1 if malformed.
int first_cpu(const std::string& list) {
  char* end = nullptr;
  long v = std::strtol(list.c_str(), &end, 10);
  return end == list.c_str() || v < 0 ? -1 : (int)v;
}

// The tightest CPU quota (in CPUs) on the way from this process's cgroup up to the root; 0 = none.
double cgroup_quota(const std::string& root) {
  std::string cg;
  if (!read_file(root + "/proc/self/cgroup", cg)) return 0;
  double best = 0;
  auto take = [&](double q) {
    if (q > 0 && (best == 0 || q < best)) best = q;
  };
  std::istringstream lines(cg);
  std::string line;
  while (std::getline(lines, line)) {
    // "hierarchy-id:controllers:path"; v2 is "0::/path", v1's CPU controller lists "cpu" among others.
    const size_t a = line.find(':'), b = a == std::string::npos ? a : line.find(':', a + 1);
    if (b == std::string::npos) continue;
    const std::string ctrl = line.substr(a + 1, b - a - 1);
    std::string path = line.substr(b + 1);
    bool v2 = line.compare(0, a, "0") == 0 && ctrl.empty(), v1 = false;
    std::istringstream cs(ctrl);
    for (std::string c; std::getline(cs, c, ',');) v1 = v1 || c == "cpu";
    if (!v2 && !v1) continue;
    std::vector<std::string> mounts;
    if (v2) mounts = {root + "/sys/fs/cgroup"};
    else mounts = {root + "/sys/fs/cgroup/" + ctrl, root + "/sys/fs/cgroup/cpu", root + "/sys/fs/cgroup/cpu,cpuacct"};
    for (const auto& m : mounts) {
      // Walk the path up to the mount's root (inside a container's namespace the path is often "/").
      for (std::string p = path;;) {
        std::string s;
        if (v2 && read_file(m + p + "/cpu.max", s)) {
          std::istringstream is(s);
          std::string q;
          double period = 0;
          if (is >> q >> period && q != "max" && period > 0) take(std::atof(q.c_str()) / period);
        } else if (v1 && read_file(m + p + "/cpu.cfs_quota_us", s)) {
          const double q = std::atof(s.c_str());
          std::string ps;
          if (q > 0 && read_file(m + p + "/cpu.cfs_period_us", ps) && std::atof(ps.c_str()) > 0) take(q / std::atof(ps.c_str()));
        }
        if (p.empty() || p == "/") break;
        const size_t slash = p.find_last_of('/');
        p = slash == std::string::npos || slash == 0 ? "/" : p.substr(0, slash);
      }
    }
  }
  return best;
}

}  // namespace

std::string CpuBudget::describe() const {
  std::string s = std::to_string(threads) + " threads (" + std::to_string(allowed) + " of " + std::to_string(logical) + " logical CPUs usable";
  if (physical > 0) s += ", " + std::to_string(physical) + " physical cores among them";
  if (quota > 0) {
    char q[32];
    std::snprintf(q, sizeof q, "%.2f", quota);
    s += std::string(", cgroup CPU quota ") + q;
  }
  return s + ")";
}

CpuBudget cpu_budget_at(const std::string& root, const std::vector<int>& allowed, int logical) {
  CpuBudget b;
  b.logical = std::max(1, logical);
  b.allowed = allowed.empty() ? b.logical : (int)allowed.size();
  // SMT siblings share a core's arithmetic units and its bandwidth: one thread per core (llama.cpp's
  // default too). A core is named by the first CPU of its sibling list.
  std::set<int> cores;
  for (int c : allowed) {
    std::string list;
    const std::string topo = root + "/sys/devices/system/cpu/cpu" + std::to_string(c) + "/topology/";
    if (!read_file(topo + "core_cpus_list", list) && !read_file(topo + "thread_siblings_list", list)) {
      cores.clear();
      break;
    }
    const int id = first_cpu(list);
    if (id < 0) {
      cores.clear();
      break;
    }
    cores.insert(id);
  }
  b.physical = (int)cores.size();
  b.quota = cgroup_quota(root);
  b.threads = b.physical > 0 ? b.physical : b.allowed;
  if (b.quota > 0) b.threads = std::min(b.threads, (int)std::ceil(b.quota - 1e-9));
  b.threads = std::max(1, b.threads);
  return b;
}

CpuBudget cpu_budget() {
  static const CpuBudget b = cpu_budget_at("", allowed_cpus(), (int)std::thread::hardware_concurrency());
  return b;
}

int default_threads(int requested) { return requested > 0 ? requested : cpu_budget().threads; }

ThreadPool::ThreadPool(int n_threads) {
  n_threads = std::max(1, n_threads);
  int64_t spin_us = 200;
  if (const char* e = std::getenv("LLAMA2_CPU_SPIN_US")) spin_us = std::max(0L, std::strtol(e, nullptr, 10));
  // Spinning threads would hold the CPUs the others need when there are more threads than CPUs.
  if (n_threads > cpu_budget().allowed) spin_us = 0;
  spin_ns_ = spin_us * 1000;
  for (int i = 1; i < n_threads; ++i) workers_.emplace_back([this] { worker_loop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_.store(true);
  }
  cv_start_.notify_all();
  for (auto& t : workers_) t.join();
}

namespace {
constexpr uint64_t kMaxParts = 0xffff;
inline uint32_t gen_of(uint64_t s) { return (uint32_t)(s >> 32); }
}  // namespace

void ThreadPool::run_chunks(uint32_t gen) {
  uint64_t s = state_.load(std::memory_order_acquire);
  for (;;) {
    const uint32_t parts = (uint32_t)(s >> 16) & kMaxParts, k = (uint32_t)s & kMaxParts;
    if (gen_of(s) != gen || k >= parts) return;
    if (!state_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel, std::memory_order_acquire)) continue;
    const int64_t n = job_n_, chunk = job_chunk_, b = (int64_t)k * chunk;
    if (b < n) (*job_)(b, std::min(n, b + chunk));
    // The last chunk wakes a sleeping caller: done_ goes up before caller_sleeping_ is read (both
    // seq_cst) and the caller sets it before it checks done_, so one of the two sees the other.
    if (done_.fetch_add(1) + 1 == (int)parts && caller_sleeping_.load()) {
      std::lock_guard<std::mutex> lk(mu_);
      cv_done_.notify_one();
    }
    s = state_.load(std::memory_order_acquire);
  }
}

void ThreadPool::worker_loop() {
  uint32_t seen = 0;
  for (;;) {
    auto ready = [&] { return stop_.load(std::memory_order_acquire) || gen_of(state_.load(std::memory_order_acquire)) != seen; };
    if (!spin_until(ready, spin_ns_)) {
      // Sleep. sleepers_ goes up before the condition is checked (both seq_cst), and the caller
      // publishes a loop before it reads sleepers_, so either this thread sees the new loop or the
      // caller sees a sleeper and notifies under the mutex.
      std::unique_lock<std::mutex> lk(mu_);
      sleepers_.fetch_add(1);
      cv_start_.wait(lk, [&] { return stop_.load() || gen_of(state_.load()) != seen; });
      sleepers_.fetch_sub(1);
    }
    if (stop_.load(std::memory_order_acquire)) return;
    seen = gen_of(state_.load(std::memory_order_acquire));
    run_chunks(seen);  // nothing left when this thread comes late: the others ran its share
  }
}

void ThreadPool::parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  const int64_t cap = std::min<int64_t>(size(), (int64_t)kMaxParts);
  const int parts = (int)std::min<int64_t>(cap, std::max<int64_t>(1, n / std::max<int64_t>(1, grain)));
  if (parts <= 1 || workers_.empty()) {
    fn(0, n);
    return;
  }
  job_ = &fn;
  job_n_ = n;
  job_chunk_ = (n + parts - 1) / parts;
  done_.store(0, std::memory_order_relaxed);
  const uint32_t gen = gen_of(state_.load(std::memory_order_relaxed)) + 1;  // only the caller writes state_'s generation
  // seq_cst: publishes the job, ordered before the read of sleepers_.
  state_.store(((uint64_t)gen << 32) | ((uint64_t)parts << 16));
  if (sleepers_.load() > 0) {
    { std::lock_guard<std::mutex> lk(mu_); }
    cv_start_.notify_all();
  }
  run_chunks(gen);
  auto done = [&] { return done_.load(std::memory_order_acquire) == parts; };
  if (spin_until(done, spin_ns_)) return;
  std::unique_lock<std::mutex> lk(mu_);
  caller_sleeping_.store(true);
  cv_done_.wait(lk, [&] { return done_.load() == parts; });
  caller_sleeping_.store(false);
}

}  // namespace l2
