/* safetensors.h -- the byte layer of the safetensors format and atomic file writes.
 * The JSON header is built and validated by the Lua side (lua/moe/io.lua);
 * this layer moves bytes and checks every length against the file. */
#ifndef MOE_SAFETENSORS_H
#define MOE_SAFETENSORS_H
#include "../core/moe.h"

/* Largest header accepted (as the reference implementation: 100 MB). */
#define MOE_ST_MAX_HEADER (100u * 1000u * 1000u)

/* Write `path` atomically: [u64 LE header length][header, space-padded to a
 * multiple of 8][each tensor's bytes in row-major order]. The file is written
 * to a temporary in the same directory, fsync'ed, then renamed over `path`. */
int moe_st_save(const char *path, const char *header, size_t hlen, int n, moe_tensor *const *ts);
/* Read the header (malloc'ed, *hlen bytes, caller frees) and the byte offset
 * where tensor data starts and the file's size. */
int moe_st_read_header(const char *path, char **header, size_t *hlen, uint64_t *data_start,
                       uint64_t *file_size);
/* A new tensor from `nbytes` at absolute `offset` of `path`; nbytes must equal
 * the shape's size in bytes and lie inside the file. */
moe_tensor *moe_st_read_tensor(const char *path, uint64_t offset, uint64_t nbytes, moe_dtype dt,
                               int ndim, const int64_t *shape);
#endif
