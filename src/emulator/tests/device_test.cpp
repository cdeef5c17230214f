// Drives the emulated Device (metal_device.h) with the emulator's test kernels:
//   emu_device_test <libforgert_emu_test_kernels.so>
// Prints one "PASS <check>" / "FAIL <check>: <why>" line per check; exit status 1 on any
// failure. Run by tests/test_emulator.py.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

#include "backends/metal/device_emulated.h"

using namespace forgert;
using namespace forgert::metal;

namespace {

int g_failures = 0;

void check(const char* name, const std::function<std::string()>& body) {
    std::string why;
    try {
        why = body();
    } catch (const std::exception& e) {
        why = std::string("unexpected exception: ") + e.what();
    }
    if (why.empty()) {
        std::printf("PASS %s\n", name);
    } else {
        std::printf("FAIL %s: %s\n", name, why.c_str());
        ++g_failures;
    }
}

// Expects wait() (or the callable) to throw a runtime_error mentioning every word.
std::string expect_error(const std::function<void()>& f, const std::vector<std::string>& words) {
    try {
        f();
    } catch (const std::exception& e) {
        const std::string msg = e.what();
        for (const std::string& w : words)
            if (msg.find(w) == std::string::npos) return "message lacks '" + w + "': " + msg;
        return "";
    }
    return "no error raised";
}

float* f32(const std::unique_ptr<Buffer>& b) { return static_cast<float*>(b->host); }

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s <kernel library>\n", argv[0]);
        return 2;
    }
    std::string why;
    std::unique_ptr<Device> dev = make_emulated_device_from(argv[1], &why);
    if (!dev) {
        std::printf("FAIL open: %s\n", why.c_str());
        return 1;
    }

    check("reduce_through_device", [&]() -> std::string {
        // tg_tree_sum: 5 threadgroups of 64 threads sum 300 values (the last group is partial).
        const uint32_t n = 300;
        auto x = dev->new_buffer(n * 4);
        auto out = dev->new_buffer(5 * 4);
        double expect[5] = {};
        for (uint32_t i = 0; i < n; ++i) {
            f32(x)[i] = float(i % 17) - 3.0f;
            expect[i / 64] += f32(x)[i];
        }
        Pipeline* p = dev->pipeline("tg_tree_sum");
        dev->begin();
        dev->set_pipeline(p);
        dev->set_bytes(&n, sizeof n, 0);
        dev->set_buffer(x.get(), 0, x->size, 1);
        dev->set_buffer(out.get(), 0, out->size, 2);
        dev->set_threadgroup_memory(64 * 4, 0);
        dev->dispatch_threadgroups({5, 1, 1}, {64, 1, 1});
        dev->commit();
        dev->wait();
        for (int g = 0; g < 5; ++g)
            if (std::fabs(f32(out)[g] - expect[g]) > 1e-3) return "group " + std::to_string(g) + " sum wrong";
        return "";
    });

    check("buffer_offsets_and_wrap_host", [&]() -> std::string {
        std::vector<float> host(128);
        for (int i = 0; i < 128; ++i) host[i] = float(i);
        auto in = dev->wrap_host(host.data(), host.size() * 4, 64 * 4);
        auto out = dev->new_buffer(64 * 4);
        dev->begin();
        dev->set_pipeline(dev->pipeline("tg_reverse_f32"));
        dev->set_buffer(in.get(), 64 * 4, in->size - 64 * 4, 0);  // second half
        dev->set_buffer(out.get(), 0, out->size, 1);
        dev->dispatch_threadgroups({1, 1, 1}, {64, 1, 1});
        dev->commit();
        dev->wait();
        for (int i = 0; i < 64; ++i)
            if (f32(out)[i] != float(127 - i)) return "element " + std::to_string(i) + " wrong";
        return "";
    });

    check("wrapped_host_through_overlapping_views", [&]() -> std::string {
        // maxBufferLength of 3 pages over 10 pages of host memory: overlapping views (buffer_views.h),
        // each 64-float range read through the view that holds it, as on a Mac.
        const size_t page = (size_t)getpagesize(), n = 10 * page / 4;
        std::vector<float> host(n);
        for (size_t i = 0; i < n; ++i) host[i] = float(i);
        set_emulator_max_buffer_length(3 * page);
        auto in = dev->wrap_host(host.data(), n * 4, 64 * 4);
        set_emulator_max_buffer_length(0);
        auto out = dev->new_buffer(64 * 4);
        for (size_t first : {size_t(0), page / 4 - 32, 2 * page / 4 - 7, 5 * page / 4 - 60, n - 64}) {
            dev->begin();
            dev->set_pipeline(dev->pipeline("tg_reverse_f32"));
            dev->set_buffer(in.get(), first * 4, 64 * 4, 0);
            dev->set_buffer(out.get(), 0, out->size, 1);
            dev->dispatch_threadgroups({1, 1, 1}, {64, 1, 1});
            dev->commit();
            dev->wait();
            for (int i = 0; i < 64; ++i)
                if (f32(out)[i] != float(first + 63 - i)) return "range at " + std::to_string(first) + " read wrong";
        }
        // Three pages from the middle of a view: longer than the views were planned for.
        return expect_error([&] { dev->set_buffer(in.get(), page + 4, 2 * page, 0); }, {"none of its", "views"});
    });

    check("divergent_barrier_is_reported", [&]() -> std::string {
        auto out = dev->new_buffer(64 * 4);
        dev->begin();
        dev->set_pipeline(dev->pipeline("tg_divergent_barrier"));
        dev->set_buffer(out.get(), 0, out->size, 0);
        dev->dispatch_threadgroups({2, 1, 1}, {64, 1, 1});
        dev->commit();
        std::string r = expect_error([&] { dev->wait(); }, {"tg_divergent_barrier", "barrier divergence"});
        if (!r.empty()) return r;
        dev->wait();  // the error is reported once
        return "";
    });

    check("missing_kernel_names_it", [&]() -> std::string {
        return expect_error([&] { dev->pipeline("tg_no_such_kernel"); }, {"tg_no_such_kernel", "similar"});
    });

    check("short_argument_struct_is_reported", [&]() -> std::string {
        auto x = dev->new_buffer(64 * 4);
        auto out = dev->new_buffer(64 * 4);
        const uint16_t too_short = 1;
        dev->begin();
        dev->set_pipeline(dev->pipeline("tg_tree_sum"));
        dev->set_bytes(&too_short, sizeof too_short, 0);
        dev->set_buffer(x.get(), 0, x->size, 1);
        dev->set_buffer(out.get(), 0, out->size, 2);
        dev->set_threadgroup_memory(64 * 4, 0);
        dev->dispatch_threadgroups({1, 1, 1}, {64, 1, 1});
        dev->commit();
        return expect_error([&] { dev->wait(); }, {"tg_tree_sum", "4-byte struct", "2 bytes"});
    });

    check("unbound_slot_is_reported", [&]() -> std::string {
        auto x = dev->new_buffer(64 * 4);
        dev->begin();
        dev->set_pipeline(dev->pipeline("tg_reverse_i32"));
        dev->set_buffer(x.get(), 0, x->size, 0);
        dev->dispatch_threadgroups({1, 1, 1}, {64, 1, 1});
        dev->commit();
        return expect_error([&] { dev->wait(); }, {"tg_reverse_i32", "buffer(1)", "not bound"});
    });

    // Two dependent dispatches: b = shift(a), c = shift(b). Without a barrier, reverse
    // order runs the second first (as a concurrent encoder may) and c comes out wrong.
    auto chained = [&](bool barrier, const char* schedule) -> bool {
        set_emulator_schedule(schedule);
        auto a = dev->new_buffer(64 * 4), b = dev->new_buffer(64 * 4), c = dev->new_buffer(64 * 4);
        for (int i = 0; i < 64; ++i) f32(a)[i] = float(i);
        Pipeline* p = dev->pipeline("tg_shift");
        dev->begin();
        dev->set_pipeline(p);
        dev->set_buffer(a.get(), 0, a->size, 0);
        dev->set_buffer(b.get(), 0, b->size, 1);
        dev->dispatch_threadgroups({1, 1, 1}, {64, 1, 1});
        if (barrier) dev->memory_barrier();
        dev->set_buffer(b.get(), 0, b->size, 0);
        dev->set_buffer(c.get(), 0, c->size, 1);
        dev->dispatch_threadgroups({1, 1, 1}, {64, 1, 1});
        dev->commit();
        dev->wait();
        set_emulator_schedule("forward");
        for (int i = 0; i < 64; ++i)
            if (f32(c)[i] != float((i + 2) % 64)) return false;
        return true;
    };
    check("barrier_orders_dispatches", [&]() -> std::string {
        if (!chained(true, "forward") || !chained(true, "reverse")) return "wrong result with a barrier";
        if (!chained(false, "forward")) return "forward order should keep encoding order";
        if (chained(false, "reverse")) return "a missing barrier went unnoticed under the reverse schedule";
        return "";
    });

    check("schedule_names", [&]() -> std::string {
        set_emulator_schedule("random:7");
        if (emulator_schedule() != "random:7") return "got " + emulator_schedule();
        set_emulator_schedule("forward");
        return expect_error([] { set_emulator_schedule("sideways"); }, {"sideways", "forward, reverse or random"});
    });

    check("dispatch_after_fork", [&]() -> std::string {
        // The worker threads do not survive fork(); the child must get a fresh pool, not hang.
        set_emulator_threads(2);
        auto run_reduce = [&]() -> bool {
            const uint32_t n = 256;
            auto x = dev->new_buffer(n * 4);
            auto out = dev->new_buffer(4 * 4);
            for (uint32_t i = 0; i < n; ++i) f32(x)[i] = 1.0f;
            dev->begin();
            dev->set_pipeline(dev->pipeline("tg_tree_sum"));
            dev->set_bytes(&n, sizeof n, 0);
            dev->set_buffer(x.get(), 0, x->size, 1);
            dev->set_buffer(out.get(), 0, out->size, 2);
            dev->set_threadgroup_memory(64 * 4, 0);
            dev->dispatch_threadgroups({4, 1, 1}, {64, 1, 1});
            dev->commit();
            dev->wait();
            for (int g = 0; g < 4; ++g)
                if (f32(out)[g] != 64.0f) return false;
            return true;
        };
        if (!run_reduce()) return "parent result wrong";
        std::fflush(stdout);
        const pid_t pid = fork();
        if (pid == 0) {
            alarm(60);  // a hang becomes SIGALRM
            _exit(run_reduce() ? 0 : 3);
        }
        int status = 0;
        waitpid(pid, &status, 0);
        set_emulator_threads(0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            return "child failed (status " + std::to_string(status) + ")";
        return "";
    });

    std::printf("%d failed\n", g_failures);
    return g_failures ? 1 : 0;
}
