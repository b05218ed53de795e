// RemoteSparse.cpp: sparse COO tensors on 'remote', held as two dense remote tensors.
//
// The server keeps strided tensors only, so a COO tensor lives on the client as
// PyTorch's own SparseTensorImpl whose indices and values are ordinary remote tensors;
// every op on it is expressed in dense ops that are captured like any other:
//   - dense -> COO (to_sparse): PyTorch's generic dense_to_sparse (nonzero, index);
//   - COO -> dense (to_dense):  zeros + index_put_ with accumulation;
//   - sparse_mask (to_dense's backward): the dense tensor indexed at the mask's indices;
//   - the accessors PyTorch's generic code needs (_indices, _values, sparse_dim, _nnz,
//     ...) and copies to and from the CPU (_to_copy copies indices and values).
// Everything else on a sparse remote tensor raises a clear error at its first use
// (RemoteKernels.cpp's fallback for the SparsePrivateUse1 key); the compressed layouts
// (CSR, CSC, BSR, BSC) are refused where they would enter 'remote' (RemoteLayouts.cpp).
#include <ATen/ops/_coalesced_native.h>
#include <ATen/ops/_indices_native.h>
#include <ATen/ops/_nnz_native.h>
#include <ATen/ops/_sparse_coo_tensor_with_dims_and_tensors_native.h>
#include <ATen/ops/_sparse_coo_tensor_with_dims_native.h>
#include <ATen/ops/_to_sparse_native.h>
#include <ATen/ops/_values_native.h>
#include <ATen/ops/dense_dim_native.h>
#include <ATen/ops/indices_native.h>
#include <ATen/ops/is_coalesced_native.h>
#include <ATen/ops/sparse_dim_native.h>
#include <ATen/ops/values_native.h>
#include <torch/library.h>

#include "remote.h"

namespace djinn {
namespace {

at::Tensor to_sparse(const at::Tensor &self, std::optional<at::Layout> layout,
                     at::OptionalIntArrayRef blocksize, std::optional<int64_t> dense_dim) {
    if (layout && *layout != at::kSparse)
        refuse_layout(*layout);
    return at::native::dense_to_sparse(self, at::kSparse, blocksize, dense_dim);
}

// A COO tensor's to_sparse(layout=...) to another layout (to COO it is PyTorch's check).
at::Tensor coo_to_sparse(const at::Tensor &self, std::optional<at::Layout> layout,
                         at::OptionalIntArrayRef blocksize, std::optional<int64_t> dense_dim) {
    if (layout && *layout != at::kSparse)
        refuse_layout(*layout);
    return at::native::sparse_coo_to_sparse(self, layout, blocksize, dense_dim);
}

at::Tensor to_sparse_dim(const at::Tensor &self, int64_t sparse_dim) {
    return at::native::dense_to_sparse(self, sparse_dim);
}

// The indices of a COO tensor as index_put_/index take them: one row per sparse dim.
c10::List<std::optional<at::Tensor>> index_rows(const at::Tensor &sparse) {
    at::Tensor idx = sparse._indices();
    c10::List<std::optional<at::Tensor>> rows;
    for (int64_t d = 0; d < sparse.sparse_dim(); d++)
        rows.push_back(idx.select(0, d));
    return rows;
}

at::Tensor to_dense(const at::Tensor &self, std::optional<at::ScalarType> dtype,
                    std::optional<bool> masked_grad) {
    (void)masked_grad;
    at::ScalarType dt = dtype.value_or(self.scalar_type());
    at::Tensor out = at::zeros(self.sizes(), self.options().layout(at::kStrided).dtype(dt));
    if (self._nnz() > 0)
        out.index_put_(index_rows(self), self._values().to(dt), /*accumulate=*/true);
    return out;
}

at::Tensor sparse_mask(const at::Tensor &self, const at::Tensor &mask) {
    TORCH_CHECK(mask.layout() == at::kSparse && self.layout() == at::kStrided,
                "djinn: sparse_mask on 'remote' takes a dense tensor and a COO mask");
    TORCH_CHECK(self.sizes() == mask.sizes(), "sparse_mask(): operands have incompatible sizes; ",
                "self has size ", self.sizes(), " but mask has size ", mask.sizes());
    at::Tensor values = mask._nnz() > 0 ? self.index(index_rows(mask))
                                        : at::empty(mask._values().sizes(), self.options());
    return at::_sparse_coo_tensor_with_dims_and_tensors(
        mask.sparse_dim(), mask.dense_dim(), mask.sizes(), mask._indices().clone(),
        values.contiguous(), mask.options().dtype(self.scalar_type()), mask.is_coalesced());
}

} // namespace

TORCH_LIBRARY_IMPL(aten, PrivateUse1, m) {
    m.impl("_to_sparse", TORCH_FN(to_sparse));
    m.impl("_to_sparse.sparse_dim", TORCH_FN(to_sparse_dim));
}

TORCH_LIBRARY_IMPL(aten, SparsePrivateUse1, m) {
    m.impl("_sparse_coo_tensor_with_dims_and_tensors",
           TORCH_FN(at::native::new_with_dims_and_tensor_sparse_symint));
    m.impl("_sparse_coo_tensor_with_dims", TORCH_FN(at::native::new_with_dims_sparse));
    m.impl("_indices", TORCH_FN(at::native::_indices_sparse));
    m.impl("_values", TORCH_FN(at::native::_values_sparse));
    m.impl("indices", TORCH_FN(at::native::indices_sparse));
    m.impl("values", TORCH_FN(at::native::values_sparse));
    m.impl("sparse_dim", TORCH_FN(at::native::sparse_dim_sparse));
    m.impl("dense_dim", TORCH_FN(at::native::dense_dim_sparse));
    m.impl("_dimI", TORCH_FN(at::native::sparse_dim_sparse));
    m.impl("_dimV", TORCH_FN(at::native::dense_dim_sparse));
    m.impl("_nnz", TORCH_FN(at::native::_nnz_sparse));
    m.impl("is_coalesced", TORCH_FN(at::native::is_coalesced_sparse));
    m.impl("_coalesced_", TORCH_FN(at::native::_coalesced_sparse_));
    m.impl("_to_sparse", TORCH_FN(coo_to_sparse));
    m.impl("_to_dense", TORCH_FN(to_dense));
    m.impl("sparse_mask", TORCH_FN(sparse_mask));
}

} // namespace djinn
