// Pipelined decoding of one sequence (KV slot 0): LlamaModel::decode_begin, decode_next and
// decode_end. llama_model.h says what each promises; docs/design.md ("Pipelined decoding")
// what overlaps with what, and why.
#include <string>

#include "llama_model.h"

namespace forgert {

void LlamaModel::encode_decode_step(const Tensor& ids, const Tensor* best, int pos, bool commit_early) {
    const BatchEntry step{0, nullptr, 1, pos};  // its token is read from `ids` on the device
    be_->begin();
    run_layers(&step, 1, &ids, commit_early);
    if (best) {
        output_row_argmax(&step, 1, *best);  // greedy: the token alone (logits_ row 0 as scratch)
    } else {
        output_row_logits(&step, 1);  // logits_ row 0, read back for the host's draw
    }
}

void LlamaModel::decode_begin(int32_t token, int pos, bool greedy) {
    decode_end();
    check_input(&token, 1, pos);
    if (greedy && !pipe_.ring.buf) {  // two rows: step t+1 writes one while the host reads the other
        bufs_.push_back(be_->alloc(2 * sizeof(int32_t)));
        pipe_.ring = make_tensor(bufs_.back().get(), 0, DType::I32, 2, 1);
    }
    const Tensor ids = make_tensor(ids_.buf, 0, DType::I32, 1, 1);
    be_->write(ids, &token, sizeof token);  // the ordinary upload: nothing of ours is in flight
    const Tensor best = greedy ? pipe_.ring.slice_rows(0, 1) : Tensor{};
    encode_decode_step(ids, greedy ? &best : nullptr, pos, true);
    be_->commit();
    pipe_.active = true;
    pipe_.greedy = greedy;
    pipe_.pos = pos;
    pipe_.cur = 0;
    pipe_.ticket = be_->committed();
    pipe_.passes = passes_;
}

int32_t LlamaModel::decode_next(bool launch, const SampleFn& sample) {
    if (!pipe_.active) throw InputError("decode_next: no pipelined decode is running (call decode_begin first)");
    if (pipe_.passes != passes_) {
        pipe_.active = false;
        throw InputError("decode_next: another evaluation ran since decode_begin; begin the pipelined decode again");
    }
    if (!pipe_.greedy && !sample) throw InputError("decode_next: a sampled pipeline needs a sampler");
    const int next_pos = pipe_.pos + 1;
    if (launch && next_pos >= cfg_.n_ctx)
        throw InputError("context overflow: decode_next would evaluate position " + std::to_string(next_pos) +
                         " of a context of " + std::to_string(cfg_.n_ctx));
    int32_t token = 0;
    try {
        if (pipe_.greedy) {
            // Step t+1 reads step t's argmax where step t left it: committed before the host waits.
            const Tensor mine = pipe_.ring.slice_rows(pipe_.cur, 1), next = pipe_.ring.slice_rows(pipe_.cur ^ 1, 1);
            if (launch) {
                encode_decode_step(mine, &next, next_pos, true);
                be_->commit();
            }
            be_->read_after(pipe_.ticket, &token, mine, sizeof token);  // step t done; t+1 runs on
        } else {
            // The token is drawn on the host from step t's logits. A GPU encodes step t+1 first (it
            // reads its token from ids_ only once committed), so only the read-back, the draw and
            // the commit stand between the two steps.
            const Tensor ids = make_tensor(ids_.buf, 0, DType::I32, 1, 1);
            // (Profiling syncs inside the pass, which would commit the step before its token is in.)
            const bool ahead = launch && be_->encodes_ahead() && !profiling_;
            if (ahead) encode_decode_step(ids, nullptr, next_pos, false);
            pipe_.row.resize(cfg_.vocab);
            be_->read_after(pipe_.ticket, pipe_.row.data(), logits_.slice_rows(0, 1), (size_t)cfg_.vocab * sizeof(float));
            token = sample(pipe_.row.data(), cfg_.vocab);
            if (token < 0 || token >= cfg_.vocab)
                throw InputError("decode_next: the sampler drew token " + std::to_string(token) + " outside [0, " +
                                 std::to_string(cfg_.vocab) + ")");
            if (ahead) {
                be_->write_before_commit(ids, &token, sizeof token);  // step t is done, t+1 not committed
            } else if (launch) {  // a backend that runs ops as called: upload, then evaluate
                be_->write(ids, &token, sizeof token);
                encode_decode_step(ids, nullptr, next_pos, true);
            }
            if (launch) be_->commit();
        }
    } catch (...) {
        pipe_.active = false;
        throw;
    }
    if (!launch) {
        pipe_.active = false;
        return token;
    }
    pipe_.pos = next_pos;
    pipe_.cur ^= 1;
    pipe_.ticket = be_->committed();
    pipe_.passes = passes_;
    return token;
}

void LlamaModel::decode_end() {
    if (!pipe_.active) return;
    pipe_.active = false;
    be_->wait();  // the step in flight (speculative past a stop) finishes; its K/V row is not counted
}

}  // namespace forgert
