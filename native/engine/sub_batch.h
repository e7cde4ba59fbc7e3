// Splitting a step into sub-batches a backend's buffers hold: at most `max_tokens` tokens and
// `max_segments` segments each. A segment may be split across sub-batches; its later part then sees
// the earlier part's K/V in the cache, so the results do not depend on where the cuts fall.
#pragma once
#include <algorithm>
#include <vector>

#include "backend.h"

namespace l2 {

struct SubBatch {
  std::vector<Segment> segs;    // token ranges of the ForwardBatch (start indexes its tokens)
  std::vector<int> table_rows;  // each segment's row of ForwardBatch::block_tables
  int n_tokens() const {
    int t = 0;
    for (const Segment& s : segs) t += s.count;
    return t;
  }
};

// Output rows of the ForwardBatch that fall in `sub` (batch.output_rows is ascending).
inline int sub_outputs(const ForwardBatch& b, const SubBatch& sub) {
  int n = 0;
  for (const Segment& sg : sub.segs) {
    auto lo = std::lower_bound(b.output_rows.begin(), b.output_rows.end(), sg.start);
    auto hi = std::lower_bound(lo, b.output_rows.end(), sg.start + sg.count);
    n += (int)(hi - lo);
  }
  return n;
}

template <typename Fn>
void for_each_sub_batch(const ForwardBatch& b, int max_tokens, int max_segments, Fn&& fn) {
  size_t seg = 0;
  int seg_off = 0;  // tokens of segments[seg] already done
  while (seg < b.segments.size()) {
    SubBatch sub;
    int tokens = 0;
    while (seg < b.segments.size() && tokens < max_tokens && (int)sub.segs.size() < max_segments) {
      const Segment& sg = b.segments[seg];
      const int n = std::min(sg.count - seg_off, max_tokens - tokens);
      sub.segs.push_back(Segment{sg.start + seg_off, n, sg.pos0 + seg_off});
      sub.table_rows.push_back((int)seg);
      tokens += n;
      seg_off += n;
      if (seg_off == sg.count) {
        ++seg;
        seg_off = 0;
      }
    }
    fn(sub);
  }
}

}  // namespace l2
