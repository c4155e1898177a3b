// Fork-join over contiguous chunks on a persistent pool of worker threads.
// Header-only, no Python.
//
// Threads are created once and sleep between calls: a thread spawned per call
// starts on its creator's CPU and is spread out by the scheduler only after
// milliseconds, longer than most kernel calls, so per-call threads barely
// scale. A second caller that finds the pool busy (kernels run with the GIL
// released, so Python threads may call concurrently) falls back to threads of
// its own; a process forked from one with a pool builds a new pool.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstddef>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

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

    // Runs task(t) for t in [0, n): chunk 0 on the caller, the rest on workers.
    // Returns false (running nothing) if another caller holds the pool.
    bool try_run(int n, const std::function<void(int)>& task) {
        std::unique_lock<std::mutex> submit(submit_, std::try_to_lock);
        if (!submit.owns_lock()) return false;
        grow(n - 1);
        std::vector<std::exception_ptr> errors(n);
        {
            std::lock_guard<std::mutex> lock(mutex_);
            task_ = &task;
            errors_ = &errors;
            n_chunks_ = n;
            pending_ = n - 1;
            ++generation_;
        }
        wake_.notify_all();
        try {
            task(0);
        } catch (...) {
            errors[0] = std::current_exception();
        }
        {
            std::unique_lock<std::mutex> lock(mutex_);
            done_.wait(lock, [&] { return pending_ == 0; });
            task_ = nullptr;
        }
        for (auto& e : errors)
            if (e) std::rethrow_exception(e);
        return true;
    }

  private:
    WorkerPool() : pid_(::getpid()) {}

    void grow(int n_workers) {
        while (static_cast<int>(threads_.size()) < n_workers) {
            const int index = static_cast<int>(threads_.size()) + 1;  // chunk it serves
            threads_.emplace_back([this, index] { loop(index); });
            threads_.back().detach();
        }
    }

    void loop(int index) {
        unsigned long seen = 0;
        for (;;) {
            const std::function<void(int)>* task;
            std::vector<std::exception_ptr>* errors;
            {
                std::unique_lock<std::mutex> lock(mutex_);
                wake_.wait(lock, [&] { return generation_ != seen; });
                seen = generation_;
                if (index >= n_chunks_) continue;
                task = task_;
                errors = errors_;
            }
            try {
                (*task)(index);
            } catch (...) {
                (*errors)[index] = std::current_exception();
            }
            {
                std::lock_guard<std::mutex> lock(mutex_);
                if (--pending_ == 0) done_.notify_one();
            }
        }
    }

    const pid_t pid_;
    std::mutex submit_, mutex_;
    std::condition_variable wake_, done_;
    std::vector<std::thread> threads_;
    const std::function<void(int)>* task_ = nullptr;
    std::vector<std::exception_ptr>* errors_ = nullptr;
    int n_chunks_ = 0, pending_ = 0;
    unsigned long generation_ = 0;
};

// Calls f(begin, end, t) for t in [0, n_chunks) over [0, n) split into
// contiguous chunks. Exceptions are re-thrown on the caller.
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
