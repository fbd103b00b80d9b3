/* safetensors.h -- the byte layer of the safetensors format and atomic file writes.
 * The JSON header is built and validated by the Lua side (lua/moe/io.lua);
 * this layer moves bytes, checks every length against the file and computes
 * the XXH3-64 checksums (libxxhash) that moelua records in the header. */
#ifndef MOE_SAFETENSORS_H
#define MOE_SAFETENSORS_H
#include "../core/moe.h"

/* Largest header accepted (as the reference implementation: 100 MB). */
#define MOE_ST_MAX_HEADER (100u * 1000u * 1000u)

/* Temporary files are named <target>.moelua-tmp-<pid>-XXXXXX. */
#define MOE_ST_TMP_TAG ".moelua-tmp-"

/* moe_st_save_ex flags */
#define MOE_ST_NAMED_TEMP 1 /* skip O_TMPFILE: write a named temporary (the fallback path) */

/* Write `path` atomically: [u64 LE header length][header, space-padded to a
 * multiple of 8][each tensor's bytes in row-major order]. The bytes go to an
 * unnamed O_TMPFILE in the target's directory (a named temporary where the
 * filesystem lacks it), are fsync'ed, then linked and renamed over `path`.
 * Before writing, temporaries that writers which no longer run left in that
 * directory are removed. */
int moe_st_save(const char *path, const char *header, size_t hlen, int n, moe_tensor *const *ts);
int moe_st_save_ex(const char *path, const char *header, size_t hlen, int n, moe_tensor *const *ts, int flags);
/* Read the header (malloc'ed, *hlen bytes, caller frees) and the byte offset
 * where tensor data starts and the file's size. A length field that cannot be
 * a safetensors header (over MOE_ST_MAX_HEADER, or a header not starting with
 * '{') is reported as "not a safetensors file". */
int moe_st_read_header(const char *path, char **header, size_t *hlen, uint64_t *data_start, uint64_t *file_size);
/* A new tensor from `nbytes` at absolute `offset` of `path`; nbytes must equal
 * the shape's size in bytes and lie inside the file. */
moe_tensor *moe_st_read_tensor(const char *path, uint64_t offset, uint64_t nbytes, moe_dtype dt, int ndim,
                               const int64_t *shape);
/* The same; when `expect` is given, the XXH3-64 of the bytes read must equal
 * *expect, else an error naming `path` and the tensor `name`. */
moe_tensor *moe_st_read_tensor_checked(const char *path, const char *name, uint64_t offset, uint64_t nbytes,
                                       moe_dtype dt, int ndim, const int64_t *shape, const uint64_t *expect);
/* XXH3-64 of a byte string, and of a tensor's bytes in row-major order (as saved). */
uint64_t moe_st_hash(const void *p, size_t n);
int moe_st_tensor_hash(const moe_tensor *t, uint64_t *out);
#endif
