// OS threads that run the threadgroups of a dispatch. Created once and kept (never
// joined: the pool lives as long as the process), so a dispatch costs a wake-up, not
// a thread start. The calling thread works too.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace fgemu {

class WorkerPool {
public:
    static WorkerPool& instance();
    // Calls job(w) for w in [0, n) on n threads (w = 0 on the caller) and waits for all.
    void run(unsigned n, const std::function<void(unsigned)>& job);

private:
    void worker_loop(unsigned index);

    std::mutex mu_;
    std::condition_variable wake_;
    std::condition_variable finished_;
    std::vector<std::thread> threads_;
    const std::function<void(unsigned)>* job_ = nullptr;
    uint64_t generation_ = 0;
    unsigned wanted_ = 0;   // helpers taking part in the current generation
    unsigned pending_ = 0;  // helpers still running it
};

}  // namespace fgemu
