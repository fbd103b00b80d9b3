/* safetensors.c -- atomic writes and checked reads of safetensors files. */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int write_all(int fd, const void *buf, size_t len) {
  const char *p = buf;
  while (len) {
    ssize_t w = write(fd, p, len);
    if (w < 0) { if (errno == EINTR) continue; return -1; }
    p += w;
    len -= (size_t)w;
  }
  return 0;
}

static int fsync_dir(const char *path) {
  char *copy = strdup(path);
  if (!copy) return -1;
  int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY);
  free(copy);
  if (fd < 0) return -1;
  int rc = fsync(fd);
  close(fd);
  return rc;
}

int moe_st_save(const char *path, const char *header, size_t hlen, int n, moe_tensor *const *ts) {
  size_t padded = (hlen + 7) / 8 * 8;
  size_t plen = strlen(path);
  char *tmp = malloc(plen + 16);
  if (!tmp) return moe_error("save: out of memory");
  memcpy(tmp, path, plen);
  memcpy(tmp + plen, ".tmp.XXXXXX", 12);
  int fd = mkstemp(tmp);
  if (fd < 0) {
    int e = errno;
    free(tmp);
    return moe_error("save: cannot create a temporary file next to '%s': %s", path, strerror(e));
  }
  fchmod(fd, 0644);
  unsigned char len8[8];
  for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)padded >> (8 * i));
  int err = write_all(fd, len8, 8) || write_all(fd, header, hlen);
  for (size_t i = hlen; i < padded && !err; i++) err = write_all(fd, " ", 1);
  for (int i = 0; i < n && !err; i++) {
    moe_tensor *c = moe_contiguous(ts[i]);
    if (!c) { close(fd); unlink(tmp); free(tmp); return -1; }
    err = write_all(fd, moe_data(c), (size_t)moe_numel(c) * moe_dtype_size(c->dtype));
    moe_tensor_release(c);
  }
  int e = errno;
  if (!err && fsync(fd)) { err = 1; e = errno; }
  if (close(fd) && !err) { err = 1; e = errno; }
  if (!err && rename(tmp, path)) { err = 1; e = errno; }
  if (err) {
    unlink(tmp);
    free(tmp);
    return moe_error("save: writing '%s' failed: %s (the previous file, if any, is unchanged)", path,
                     strerror(e));
  }
  free(tmp);
  fsync_dir(path);
  return 0;
}

int moe_st_read_header(const char *path, char **header, size_t *hlen, uint64_t *data_start,
                       uint64_t *file_size) {
  int fd = open(path, O_RDONLY);
  if (fd < 0) return moe_error("load: cannot open '%s': %s", path, strerror(errno));
  struct stat st;
  unsigned char len8[8];
  if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
    close(fd);
    return moe_error("load: '%s' is not a regular file", path);
  }
  uint64_t size = (uint64_t)st.st_size;
  if (size < 8 || pread(fd, len8, 8, 0) != 8) {
    close(fd);
    return moe_error("load: '%s' is truncated: %llu bytes, too short for a safetensors header", path,
                     (unsigned long long)size);
  }
  uint64_t n = 0;
  for (int i = 7; i >= 0; i--) n = n << 8 | len8[i];
  if (n > MOE_ST_MAX_HEADER || n > size - 8) {
    close(fd);
    return moe_error("load: '%s' is corrupted: its header claims %llu bytes but the file has %llu "
                     "after the length field", path, (unsigned long long)n, (unsigned long long)(size - 8));
  }
  char *h = malloc((size_t)n + 1);
  if (!h) { close(fd); return moe_error("load: out of memory reading the header of '%s'", path); }
  ssize_t r = pread(fd, h, (size_t)n, 8);
  close(fd);
  if (r != (ssize_t)n) {
    free(h);
    return moe_error("load: '%s': short read of the header", path);
  }
  h[n] = 0;
  *header = h;
  *hlen = (size_t)n;
  *data_start = 8 + n;
  *file_size = size;
  return 0;
}

moe_tensor *moe_st_read_tensor(const char *path, uint64_t offset, uint64_t nbytes, moe_dtype dt,
                               int ndim, const int64_t *shape) {
  char b[160];
  moe_tensor probe = {.ndim = ndim};
  if (ndim < 0 || ndim > MOE_MAX_DIMS) { moe_error("load: '%s': too many dims", path); return NULL; }
  memcpy(probe.shape, shape, sizeof(int64_t) * (size_t)ndim);
  uint64_t want = (uint64_t)moe_dtype_size(dt);
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0 || (shape[i] && want > UINT64_MAX / 2 / (uint64_t)shape[i])) {
      moe_error("load: '%s': bad shape %s", path, moe_shape_str(&probe, b));
      return NULL;
    }
    want *= (uint64_t)shape[i];
  }
  if (want != nbytes) {
    moe_error("load: '%s': a %s tensor of shape %s needs %llu bytes but its offsets span %llu", path,
              moe_dtype_name(dt), moe_shape_str(&probe, b), (unsigned long long)want,
              (unsigned long long)nbytes);
    return NULL;
  }
  int fd = open(path, O_RDONLY);
  if (fd < 0) { moe_error("load: cannot open '%s': %s", path, strerror(errno)); return NULL; }
  struct stat st;
  if (fstat(fd, &st) || offset > (uint64_t)st.st_size || nbytes > (uint64_t)st.st_size - offset) {
    close(fd);
    moe_error("load: '%s' is truncated: tensor bytes %llu..%llu lie past its end (%lld bytes)", path,
              (unsigned long long)offset, (unsigned long long)(offset + nbytes), (long long)st.st_size);
    return NULL;
  }
  moe_tensor *t = moe_empty(ndim, shape, dt);
  if (!t) { close(fd); return NULL; }
  char *p = moe_data(t);
  uint64_t done = 0;
  while (done < nbytes) {
    ssize_t r = pread(fd, p + done, (size_t)(nbytes - done), (off_t)(offset + done));
    if (r <= 0) {
      if (r < 0 && errno == EINTR) continue;
      close(fd);
      moe_tensor_release(t);
      moe_error("load: '%s': read failed at byte %llu", path, (unsigned long long)(offset + done));
      return NULL;
    }
    done += (uint64_t)r;
  }
  close(fd);
  if (dt == MOE_BOOL) { /* only 0 and 1 are booleans */
    const unsigned char *u = (const unsigned char *)p;
    for (uint64_t i = 0; i < nbytes; i++)
      if (u[i] > 1) {
        moe_error("load: '%s': a bool tensor holds byte value %d", path, u[i]);
        moe_tensor_release(t);
        return NULL;
      }
  }
  return t;
}
