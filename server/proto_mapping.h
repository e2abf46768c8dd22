// The mapping between the loader's types and weightd.v1's messages, in both
// directions: requests to LoadSpecs, placed models to descriptions, Status to
// grpc::Status.
#ifndef WEIGHTD_SERVER_PROTO_MAPPING_H_
#define WEIGHTD_SERVER_PROTO_MAPPING_H_

#include <grpcpp/grpcpp.h>

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "loader/cache/checkpoint_cache.h"
#include "loader/cache/load_plan.h"
#include "loader/cache/loaded_model.h"
#include "proto/weightd/v1/weightd.pb.h"

namespace weightd {

// Status -> grpc::Status with the same code and a bounded message.
grpc::Status ToGrpcStatus(const absl::Status& status);

LoadSpec SpecFromRequest(const weightd::v1::LoadRequest& request);

void FillTensor(const PlacedTensor& tensor, weightd::v1::Tensor* out);

// How a description carries its tensors: one Tensor message each, or the
// packed table (ModelDescription.packed_tensors) clients decode in bulk.
enum class TensorListForm { kRepeated, kCompact };

// The description a client needs to reach every tensor's bytes. kCompact
// copies the model's packed table (LoadedModel::PackedTable, encoded once per
// model) and falls back to the repeated form where the table cannot pack.
void FillModelDescription(const std::string& model_id, const LoadedModel& model,
                          const CacheEntryInfo* info, TensorListForm form,
                          weightd::v1::ModelDescription* out);

// `table` into out's packed_tensors, packed_names and packed_strings.
void FillPackedTable(const PackedTensorTable& table,
                     weightd::v1::ModelDescription* out);

}  // namespace weightd

#endif  // WEIGHTD_SERVER_PROTO_MAPPING_H_
