#include "server/proto_mapping.h"

#include <cstdint>

#include "server/request_validation.h"

namespace weightd {

void FillTensor(const PlacedTensor& tensor, v1::Tensor* out) {
  out->set_name(tensor.info.name);
  out->set_dtype(std::string(DTypeName(tensor.info.dtype)));
  for (int64_t dim : tensor.info.shape) out->add_shape(dim);
  for (int64_t stride : tensor.info.stride) out->add_stride(stride);
  out->set_storage_offset(tensor.info.storage_offset);
  out->set_byte_size(tensor.byte_size);
  out->set_saved_location(tensor.saved_location);
  out->set_placed_location(tensor.placed_location);
  out->set_buffer_index(tensor.buffer_index);
  out->set_storage_byte_offset(tensor.storage_byte_offset);
  out->set_requires_grad(tensor.info.requires_grad);
}

namespace {

void FillIdentity(const FileIdentity& id, v1::FileIdentity* out) {
  out->set_device(id.device);
  out->set_inode(id.inode);
  out->set_size(id.size);
  out->set_mtime_ns(id.mtime_ns);
  out->set_ctime_ns(id.ctime_ns);
}

}  // namespace

void FillPackedTable(const PackedTensorTable& table,
                     v1::ModelDescription* out) {
  out->set_packed_tensors(table.records);
  out->set_packed_names(table.names);
  out->mutable_packed_strings()->Reserve(table.strings.size());
  for (const std::string& text : table.strings) out->add_packed_strings(text);
}

LoadSpec SpecFromRequest(const v1::LoadRequest& request) {
  LoadSpec spec;
  spec.path = request.path();
  spec.format_hint = request.format_hint();
  spec.target = request.placement().target();
  for (const auto& [from, to] : request.placement().remap())
    spec.remap[from] = to;
  spec.cast_dtype = request.cast_dtype();
  spec.filter.assign(request.tensor_filter().begin(),
                     request.tensor_filter().end());
  spec.lease_session = request.lease_session();
  spec.host_copy = request.host_copy();
  if (request.has_shard()) {
    spec.shard.rank = request.shard().rank();
    spec.shard.world_size = request.shard().world_size();
    for (const v1::ShardRule& rule : request.shard().rules())
      spec.shard.rules.emplace_back(rule.pattern(), rule.dim());
    spec.shard.rule_set = request.shard().rule_set();
  }
  return spec;
}

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                      BoundStatusMessage(status.message()));
}

void FillModelDescription(const std::string& model_id, const LoadedModel& model,
                          const CacheEntryInfo* info, TensorListForm form,
                          v1::ModelDescription* out) {
  out->set_model_id(model_id);
  out->set_path(model.path);
  FillIdentity(model.identity, out->mutable_identity());
  out->set_format(model.FormatName());
  out->set_placement(model.placement);
  // The table is the model's, encoded once: each call only copies its bytes.
  const PackedTensorTable* table =
      form == TensorListForm::kCompact ? model.PackedTable() : nullptr;
  if (table != nullptr) {
    FillPackedTable(*table, out);
  } else {
    for (const PlacedTensor& tensor : model.tensors)
      FillTensor(tensor, out->add_tensors());
  }
  for (const PlacedBuffer& buffer : model.buffers) {
    v1::Buffer* proto = out->add_buffers();
    switch (buffer.kind) {
      case PlacedBuffer::Kind::kFile:
        proto->mutable_file()->set_path(buffer.path);
        FillIdentity(buffer.identity,
                     proto->mutable_file()->mutable_identity());
        break;
      case PlacedBuffer::Kind::kSharedMemory:
        proto->mutable_shared_memory()->set_name(buffer.shm_name);
        proto->mutable_shared_memory()->set_size(buffer.size);
        break;
      case PlacedBuffer::Kind::kGpu: {
        v1::GpuArena* gpu = proto->mutable_gpu();
        gpu->set_gpu_uuid(buffer.gpu_uuid);
        gpu->set_gpu_index(buffer.gpu_index);
        gpu->set_ipc_handle(buffer.ipc_handle);
        gpu->set_size(buffer.size);
        switch (buffer.handle_kind) {
          case ArenaHandleKind::kCudaIpc:
            gpu->set_handle_kind(v1::GpuArena::CUDA_IPC);
            break;
          case ArenaHandleKind::kSharedMemory:
            gpu->set_handle_kind(v1::GpuArena::SHARED_MEMORY);
            // The deprecated field, still written for clients from before
            // handle_kind (they open shared-memory arenas when it is set).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
            gpu->set_fake(true);
#pragma GCC diagnostic pop
            break;
        }
        break;
      }
    }
  }
  for (const auto& [name, text] : model.extra_files)
    (*out->mutable_extra_files())[name] = text;
  out->set_metadata_json(model.metadata_json);
  if (model.directory != nullptr) {
    for (const std::string& shard : model.directory->shards)
      out->add_shards(shard);
    out->set_config_json(model.directory->config_json);
    out->set_generation_config_json(model.directory->generation_config_json);
  }
  uint64_t resident = 0;
  for (const auto& [tier, bytes] : model.resident) resident += bytes;
  out->set_resident_bytes(resident);
  if (info != nullptr) out->set_lease_count(info->lease_count);
}

}  // namespace weightd
