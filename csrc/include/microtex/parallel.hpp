// Fork-join over contiguous chunks on a persistent pool of worker threads.
// Header-only, no Python.
//
// Threads are created once, spin for a moment after each call and then sleep:
// a thread spawned per call starts on its creator's CPU and is spread out by
// the scheduler only after milliseconds, longer than most kernel calls, so
// per-call threads barely scale. A second caller that finds the pool busy
// (kernels run with the GIL released, so Python threads may call
// concurrently) falls back to threads of its own; a process forked from one
// with a pool builds a new pool.
#pragma once

#include <unistd.h>
#ifdef __linux__
#include <pthread.h>
#include <sched.h>
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#ifndef MICROTEX_SPIN_US
#define MICROTEX_SPIN_US 2000
#endif

namespace microtex::detail {

inline int resolve_threads(int n_threads) {
    if (n_threads > 0) return n_threads;
    unsigned hw = std::thread::hardware_concurrency();
    return hw == 0 ? 1 : static_cast<int>(hw);
}

class WorkerPool {
  public:
    // The pool of this process (built on first use, rebuilt after fork()).
    // Deliberately never destroyed: its threads die with the process.
    static WorkerPool& instance() {
        static std::mutex guard;
        static WorkerPool* pool = nullptr;
        std::lock_guard<std::mutex> lock(guard);
        if (pool == nullptr || pool->pid_ != ::getpid()) pool = new WorkerPool();
        return *pool;
    }

    // Runs task(t) once for every t in [0, n). Chunks are claimed, not
    // assigned: the caller and the woken workers take the next unclaimed
    // chunk until none is left, so a worker that the scheduler starts late
    // (its CPU busy with another process, a halted vCPU) costs a share of
    // the work, not a wait. Returns false (running nothing) if another caller
    // holds the pool.
    bool try_run(int n, const std::function<void(int)>& task) {
        std::unique_lock<std::mutex> submit(submit_, std::try_to_lock);
        if (!submit.owns_lock()) return false;
        grow(n - 1);
        steer_workers();
        std::vector<std::exception_ptr> errors(n);
        std::uint32_t gen;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            gen = generation_.load() + 1;
            task_ = &task;
            errors_ = &errors;
            n_chunks_ = n;
            remaining_.store(n);
            claim_.store(std::uint64_t(gen) << 32);
            generation_.store(gen, std::memory_order_release);
        }
        wake_.notify_all();
        run_chunks(gen, n, &task, &errors);
        spin_until([&] { return remaining_.load(std::memory_order_acquire) == 0; });
        {
            std::unique_lock<std::mutex> lock(mutex_);
            done_.wait(lock, [&] { return remaining_.load() == 0; });
            task_ = nullptr;
        }
        for (auto& e : errors)
            if (e) std::rethrow_exception(e);
        return true;
    }

  private:
    WorkerPool() : pid_(::getpid()) {
#ifdef __linux__
        CPU_ZERO(&allowed_);
        if (sched_getaffinity(0, sizeof(allowed_), &allowed_) != 0) CPU_ZERO(&allowed_);
#endif
    }

    void grow(int n_workers) {
        while (static_cast<int>(handles_.size()) < n_workers) {
            std::thread worker([this] { loop(); });
            handles_.push_back(worker.native_handle());  // stays valid: workers never exit
            worker.detach();
            steered_cpu_ = -2;  // the new worker has no mask yet
        }
    }

    // Keeps the workers off the CPU the caller runs on. A worker woken from
    // sleep is often placed on its waker's CPU (wake-affine scheduling, made
    // worse on virtual machines whose idle vCPUs are halted) and then runs
    // only after the caller's own chunk: two threads as slow as one. Masks
    // change only when the caller moves (a syscall per worker, not per call).
    void steer_workers() {
#ifdef __linux__
        const int cpu = sched_getcpu();
        if (cpu == steered_cpu_ || CPU_COUNT(&allowed_) < 2) return;
        steered_cpu_ = cpu;
        cpu_set_t mask = allowed_;
        if (cpu >= 0 && CPU_ISSET(cpu, &mask)) CPU_CLR(cpu, &mask);
        for (auto h : handles_) pthread_setaffinity_np(h, sizeof(mask), &mask);
#endif
    }

    // Busy-waits (with a pause hint) until pred() or kSpin has passed: a worker
    // that keeps running for a moment after its chunk keeps its CPU, so the
    // next call finds it there instead of waking it up (on a virtual machine a
    // woken thread often lands on its waker's CPU and runs after it).
    template <class Pred>
    static bool spin_until(Pred pred) {
        const auto deadline = std::chrono::steady_clock::now() + kSpin;
        for (unsigned i = 1;; ++i) {
            if (pred()) return true;
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#endif
            if (i % 64 == 0 && std::chrono::steady_clock::now() > deadline) return false;
        }
    }

    // Claims and runs chunks of call `gen` until none is left. A claim
    // succeeds only while `gen` is the current call, so a worker that wakes
    // after its call has finished never touches the next call's chunks.
    // (task and errors may be gone by the time a late worker gets here: they
    // are dereferenced only after a successful claim.)
    void run_chunks(std::uint32_t gen, int n, const std::function<void(int)>* task,
                    std::vector<std::exception_ptr>* errors) {
        for (;;) {
            std::uint64_t v = claim_.load(std::memory_order_acquire);
            do {
                if (std::uint32_t(v >> 32) != gen || int(v & 0xffffffffu) >= n) return;
            } while (!claim_.compare_exchange_weak(v, v + 1, std::memory_order_acq_rel));
            const int t = int(v & 0xffffffffu);
            try {
                (*task)(t);
            } catch (...) {
                (*errors)[t] = std::current_exception();
            }
            if (remaining_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
                std::lock_guard<std::mutex> lock(mutex_);
                done_.notify_one();
            }
        }
    }

    void loop() {
        std::uint32_t seen = 0;
        for (;;) {
            const std::function<void(int)>* task;
            std::vector<std::exception_ptr>* errors;
            int n;
            spin_until([&] { return generation_.load(std::memory_order_acquire) != seen; });
            {
                std::unique_lock<std::mutex> lock(mutex_);
                wake_.wait(lock, [&] { return generation_.load() != seen; });
                seen = generation_.load();
                task = task_;
                errors = errors_;
                n = n_chunks_;
            }
            if (task != nullptr) run_chunks(seen, n, task, errors);
        }
    }

    const pid_t pid_;
    std::mutex submit_, mutex_;
    std::condition_variable wake_, done_;
    std::vector<std::thread::native_handle_type> handles_;  // one per worker
    int steered_cpu_ = -2;
#ifdef __linux__
    cpu_set_t allowed_;
#endif
    const std::function<void(int)>* task_ = nullptr;
    std::vector<std::exception_ptr>* errors_ = nullptr;
    int n_chunks_ = 0;
    std::atomic<int> remaining_{0};              // chunks of the current call not yet finished
    std::atomic<std::uint64_t> claim_{0};        // (generation << 32) | next unclaimed chunk
    std::atomic<std::uint32_t> generation_{0};  // one per call
    static constexpr std::chrono::microseconds kSpin{MICROTEX_SPIN_US};
};

// Calls f(begin, end, t) for t in [0, n_chunks) over [0, n) split into
// contiguous chunks; chunk t may run on any thread (state a chunk keeps must
// be indexed by t, not by thread). Exceptions are re-thrown on the caller.
template <class F>
void parallel_chunks(std::ptrdiff_t n, int n_chunks, F&& f) {
    if (n <= 0) return;
    n_chunks = static_cast<int>(std::max<std::ptrdiff_t>(1, std::min<std::ptrdiff_t>(n_chunks, n)));
    if (n_chunks == 1) {
        f(std::ptrdiff_t{0}, n, 0);
        return;
    }
    const std::function<void(int)> chunk = [&](int t) {
        const std::ptrdiff_t lo = n * t / n_chunks, hi = n * (t + 1) / n_chunks;
        f(lo, hi, t);
    };
    if (WorkerPool::instance().try_run(n_chunks, chunk)) return;
    // pool busy with another caller: threads of our own
    std::vector<std::exception_ptr> errors(n_chunks);
    std::vector<std::thread> workers;
    workers.reserve(n_chunks - 1);
    auto run = [&](int t) {
        try {
            chunk(t);
        } catch (...) {
            errors[t] = std::current_exception();
        }
    };
    for (int t = 1; t < n_chunks; ++t) workers.emplace_back(run, t);
    run(0);
    for (auto& w : workers) w.join();
    for (auto& e : errors)
        if (e) std::rethrow_exception(e);
}

}  // namespace microtex::detail
