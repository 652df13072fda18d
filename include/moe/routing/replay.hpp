// RoutingRecord: the experts each token was routed to, per layer, kept to be replayed later
// (Router::replay, MoELayer::replay), with a compact byte format for files and messages.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "moe/core/error.hpp"
#include "moe/core/types.hpp"
#include "moe/routing/routing.hpp"

namespace moe {

/// One layer's choices: expert_ids [T, k] in selection order, over num_experts experts.
struct RecordedLayer {
  Index num_experts = 0;
  ExpertIdMatrix expert_ids;
};

/// The routed experts of a forward over several layers, in the order they were recorded: what
/// Megatron-Core's RouterReplay RECORD keeps and what vLLM and SGLang return per token, to be
/// replayed in training so it routes as inference did.
///
/// Byte format (little-endian, version 1):
///   "MOEROUTE" | u32 version | u32 layers | per layer: u32 num_experts, u32 top_k, u64 tokens,
///   u8 id_bytes, then tokens * top_k ids of id_bytes each, row by row
/// where id_bytes is the fewest of 1, 2, 4 that hold num_experts - 1 (one byte per choice up to
/// 256 experts, a quarter of the int32 ids in memory). A layer with unused slots (kUnusedSlot,
/// adaptive k) writes them as the all-ones value of the fewest bytes in which it is not an expert
/// id (1 byte below 256 experts).
struct RoutingRecord {
  std::vector<RecordedLayer> layers;

  /// Appends a layer's choices (call once per layer per step, in layer order).
  template <class S>
  void append(const Routing<S>& routing) {
    layers.push_back({routing.num_experts(), routing.expert_ids});
  }

  /// The byte format above.
  std::vector<std::uint8_t> to_bytes() const {
    std::vector<std::uint8_t> out(kMagic, kMagic + kMagicSize);
    put(out, kVersion, 4);
    put(out, layers.size(), 4);
    for (std::size_t l = 0; l < layers.size(); ++l) {
      const RecordedLayer& layer = layers[l];
      check_layer(layer, l);
      const bool unused = (layer.expert_ids.array() == kUnusedSlot).any();
      const int width = id_bytes(layer.num_experts + (unused ? 1 : 0));
      put(out, static_cast<std::uint64_t>(layer.num_experts), 4);
      put(out, static_cast<std::uint64_t>(layer.expert_ids.cols()), 4);
      put(out, static_cast<std::uint64_t>(layer.expert_ids.rows()), 8);
      put(out, static_cast<std::uint64_t>(width), 1);
      const std::uint64_t unused_value = all_ones(width);
      for (Index i = 0; i < layer.expert_ids.size(); ++i) {
        const ExpertId id = layer.expert_ids.data()[i];
        put(out, id == kUnusedSlot ? unused_value : static_cast<std::uint64_t>(id), width);
      }
    }
    return out;
  }

  /// Parses the byte format; moe::Error naming `argument` for anything malformed (wrong magic or
  /// version, truncated, ids out of range or repeated within a token).
  static RoutingRecord from_bytes(const std::uint8_t* data, std::size_t size,
                                  const char* argument = "bytes") {
    Reader in{data, size, 0, argument};
    require(size >= kMagicSize && std::memcmp(data, kMagic, kMagicSize) == 0, argument,
            "a routing record starting with \"MOEROUTE\"", "other bytes");
    in.position = kMagicSize;
    const std::uint64_t version = in.get(4, "version");
    require(version == kVersion, argument, detail::concat("format version ", kVersion), version);
    const std::uint64_t count = in.get(4, "layer count");
    RoutingRecord record;
    for (std::uint64_t l = 0; l < count; ++l) {
      RecordedLayer layer;
      const std::uint64_t experts = in.get(4, "num_experts");
      const std::uint64_t top_k = in.get(4, "top_k");
      const std::uint64_t tokens = in.get(8, "tokens");
      const std::uint64_t width = in.get(1, "id_bytes");
      require(experts >= 1 && experts <= kMaxExperts && top_k >= 1 && top_k <= experts, argument,
              "a layer with 1 <= top_k <= num_experts <= 2^31 - 1",
              detail::concat("num_experts ", experts, ", top_k ", top_k, " in layer ", l));
      layer.num_experts = static_cast<Index>(experts);
      const int plain = id_bytes(layer.num_experts), with_unused = id_bytes(layer.num_experts + 1);
      require(width == static_cast<std::uint64_t>(plain) ||
                  width == static_cast<std::uint64_t>(with_unused),
              argument,
              detail::concat(plain, "-byte ids (", with_unused, " with unused slots) for ", experts,
                             " experts in layer ", l),
              width);
      // the all-ones value is an unused slot wherever it cannot be an expert id
      const std::uint64_t unused_value = all_ones(static_cast<int>(width));
      const bool unused_encodable = unused_value >= experts;
      // tokens * top_k * width bytes must be present: checked before anything is allocated
      require(tokens <= (size - in.position) / top_k / width, argument,
              detail::concat(tokens, " tokens of ", top_k, " ids in layer ", l),
              detail::concat(size - in.position, " bytes left"));
      layer.expert_ids.resize(static_cast<Index>(tokens), static_cast<Index>(top_k));
      for (Index i = 0; i < layer.expert_ids.size(); ++i) {
        const std::uint64_t value = in.get(static_cast<int>(width), "ids");
        layer.expert_ids.data()[i] = unused_encodable && value == unused_value
                                         ? kUnusedSlot
                                         : static_cast<ExpertId>(std::min<std::uint64_t>(
                                               value, static_cast<std::uint64_t>(kMaxExperts)));
      }
      check_layer(layer, static_cast<std::size_t>(l), argument);
      record.layers.push_back(std::move(layer));
    }
    require(in.position == size, argument, "no bytes after the last layer",
            detail::concat(size - in.position, " more bytes"));
    return record;
  }

  /// Writes the byte format to `path`; moe::Error when the file cannot be written.
  void save(const std::string& path) const {
    const std::vector<std::uint8_t> bytes = to_bytes();
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data()),
              static_cast<std::streamsize>(bytes.size()));
    require(static_cast<bool>(out), "path", "a writable file", path);
  }

  /// Reads a record save() wrote; moe::Error when the file cannot be read or is malformed.
  static RoutingRecord load(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    require(static_cast<bool>(in), "path", "a readable file", path);
    const std::vector<std::uint8_t> bytes((std::istreambuf_iterator<char>(in)),
                                          std::istreambuf_iterator<char>());
    return from_bytes(bytes.data(), bytes.size(), path.c_str());
  }

  /// Checks layer `index`: 1 <= E < 2^31, ids in [0, E) or kUnusedSlot, no expert twice in a
  /// token. Errors name
  /// `argument` followed by the layer, e.g. "RoutingRecord::layers[2]".
  static void check_layer(const RecordedLayer& layer, std::size_t index,
                          const std::string& argument = "RoutingRecord::layers") {
    const std::string name = argument + "[" + std::to_string(index) + "]";
    require(layer.num_experts >= 1 && layer.num_experts <= kMaxExperts, name.c_str(),
            "num_experts in [1, 2^31 - 1]", layer.num_experts);
    require(layer.expert_ids.cols() >= 1 || layer.expert_ids.rows() == 0, name.c_str(),
            "expert_ids with at least one choice per token", layer.expert_ids.cols());
    detail::require_expert_ids(layer.expert_ids, layer.expert_ids.rows(), layer.expert_ids.cols(),
                               layer.num_experts, name.c_str());
  }

 private:
  static constexpr char kMagic[] = {'M', 'O', 'E', 'R', 'O', 'U', 'T', 'E'};
  static constexpr std::size_t kMagicSize = sizeof(kMagic);
  static constexpr std::uint64_t kVersion = 1;
  static constexpr Index kMaxExperts = 0x7fffffff;  // ExpertId is int32

  static int id_bytes(Index num_experts) {
    return num_experts <= 0x100 ? 1 : num_experts <= 0x10000 ? 2 : 4;
  }

  static std::uint64_t all_ones(int bytes) { return (std::uint64_t(1) << (8 * bytes)) - 1; }

  static void put(std::vector<std::uint8_t>& out, std::uint64_t value, int bytes) {
    for (int b = 0; b < bytes; ++b) out.push_back(static_cast<std::uint8_t>(value >> (8 * b)));
  }

  struct Reader {
    const std::uint8_t* data;
    std::size_t size, position;
    const char* argument;

    std::uint64_t get(int bytes, const char* field) {
      require(size - position >= static_cast<std::size_t>(bytes), argument,
              detail::concat("a routing record with its ", field), "truncated bytes");
      std::uint64_t value = 0;
      for (int b = 0; b < bytes; ++b)
        value |= static_cast<std::uint64_t>(data[position + b]) << (8 * b);
      position += static_cast<std::size_t>(bytes);
      return value;
    }
  };
};

}  // namespace moe
