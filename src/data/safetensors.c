/* safetensors.c -- atomic writes and checked reads of safetensors files. */
#define _GNU_SOURCE /* O_TMPFILE, AT_EMPTY_PATH */
#include "safetensors.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

uint64_t moe_st_hash(const void *p, size_t n) { return (uint64_t)XXH3_64bits(p, n); }

int moe_st_tensor_hash(const moe_tensor *t, uint64_t *out) {
  if (t->device != MOE_CPU) return moe_error("checksum: the tensor is on the GPU (copy it to the host first)");
  moe_tensor *c = moe_contiguous(t);
  if (!c) return -1;
  *out = moe_st_hash(moe_data(c), (size_t)moe_numel(c) * moe_dtype_size(c->dtype));
  moe_tensor_release(c);
  return 0;
}

static int write_all(int fd, const void *buf, size_t len) {
  const char *p = buf;
  while (len) {
    ssize_t w = write(fd, p, len);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += w;
    len -= (size_t)w;
  }
  return 0;
}

/* the directory part of path (malloc'ed) */
static char *dir_of(const char *path) {
  char *copy = strdup(path);
  if (!copy) return NULL;
  char *d = strdup(dirname(copy));
  free(copy);
  return d;
}

static int fsync_dir(const char *path) {
  char *dir = dir_of(path);
  if (!dir) return -1;
  int fd = open(dir, O_RDONLY | O_DIRECTORY);
  free(dir);
  if (fd < 0) return -1;
  int rc = fsync(fd);
  close(fd);
  return rc;
}

/* Remove the temporaries <any>.moelua-tmp-<pid>-XXXXXX of `path`'s directory
 * whose writer process is gone (a writer killed between link and rename, or
 * one that had no O_TMPFILE). A live or unknown pid keeps its file. */
static void sweep_stale(const char *path) {
  char *dir = dir_of(path);
  if (!dir) return;
  int dfd = open(dir, O_RDONLY | O_DIRECTORY);
  free(dir);
  if (dfd < 0) return;
  DIR *d = fdopendir(dfd);
  if (!d) {
    close(dfd);
    return;
  }
  pid_t self = getpid();
  size_t taglen = strlen(MOE_ST_TMP_TAG);
  struct dirent *e;
  while ((e = readdir(d))) {
    const char *tag = NULL;
    for (const char *p = strstr(e->d_name, MOE_ST_TMP_TAG); p; p = strstr(p + 1, MOE_ST_TMP_TAG)) tag = p;
    if (!tag || tag == e->d_name) continue;
    const char *q = tag + taglen;
    char *end;
    errno = 0;
    long pid = strtol(q, &end, 10);
    if (errno || *q < '0' || *q > '9' || *end != '-' || strlen(end + 1) != 6 || pid <= 0 || (pid_t)pid == self)
      continue;
    if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue; /* alive, or not ours to judge */
    struct stat st;
    if (fstatat(dfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) || !S_ISREG(st.st_mode)) continue;
    unlinkat(dfd, e->d_name, 0);
  }
  closedir(d);
}

/* header and tensor bytes into fd; 0 or -1 with errno */
static int write_payload(int fd, const char *header, size_t hlen, int n, moe_tensor *const *ts, int *engine_err) {
  size_t padded = (hlen + 7) / 8 * 8;
  unsigned char len8[8];
  for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)padded >> (8 * i));
  if (write_all(fd, len8, 8) || write_all(fd, header, hlen)) return -1;
  for (size_t i = hlen; i < padded; i++)
    if (write_all(fd, " ", 1)) return -1;
  for (int i = 0; i < n; i++) {
    moe_tensor *c = moe_contiguous(ts[i]);
    if (!c) {
      *engine_err = 1;
      return -1;
    }
    int err = write_all(fd, moe_data(c), (size_t)moe_numel(c) * moe_dtype_size(c->dtype));
    int e = errno;
    moe_tensor_release(c);
    if (err) {
      errno = e;
      return -1;
    }
  }
  return fsync(fd);
}

/* tmp = path + ".moelua-tmp-<pid>-" + 6 chars (XXXXXX for mkstemp, else random) */
static char *temp_name(const char *path, int random) {
  size_t plen = strlen(path);
  char *tmp = malloc(plen + 48);
  if (!tmp) return NULL;
  int k = snprintf(tmp, plen + 48, "%s%s%ld-XXXXXX", path, MOE_ST_TMP_TAG, (long)getpid());
  if (random) {
    static unsigned long counter;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    unsigned long x = (unsigned long)ts.tv_nsec * 2654435761u ^ (unsigned long)ts.tv_sec ^ (++counter << 20);
    const char *abc = "abcdefghijklmnopqrstuvwxyz0123456789";
    for (int i = 0; i < 6; i++) {
      tmp[k - 6 + i] = abc[x % 36];
      x /= 36;
    }
  }
  return tmp;
}

/* give the unnamed file fd a temporary name in path's directory; NULL on failure */
static char *link_tmpfile(int fd, const char *path) {
  char proc[64];
  snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
  for (int attempt = 0; attempt < 64; attempt++) {
    char *tmp = temp_name(path, 1);
    if (!tmp) return NULL;
    if (linkat(AT_FDCWD, proc, AT_FDCWD, tmp, AT_SYMLINK_FOLLOW) == 0) return tmp;
    int e = errno;
    if (e == ENOENT && linkat(fd, "", AT_FDCWD, tmp, AT_EMPTY_PATH) == 0) return tmp; /* no /proc */
    free(tmp);
    if (e != EEXIST) return NULL;
  }
  return NULL;
}

int moe_st_save_ex(const char *path, const char *header, size_t hlen, int n, moe_tensor *const *ts, int flags) {
  for (int i = 0; i < n; i++)
    if (ts[i]->device != MOE_CPU)
      return moe_error("save_tensors: tensor %d is on the device; bring it to the host first", i + 1);
  sweep_stale(path);
  int engine_err = 0, e = 0;
  char *tmp = NULL;
  if (!(flags & MOE_ST_NAMED_TEMP)) {
    /* an unnamed file: a writer killed before the rename leaves nothing behind */
    char *dir = dir_of(path);
    if (!dir) return moe_error("save: out of memory");
    int fd = open(dir, O_TMPFILE | O_WRONLY | O_CLOEXEC, 0644);
    free(dir);
    if (fd >= 0) {
      fchmod(fd, 0644);
      int err = write_payload(fd, header, hlen, n, ts, &engine_err);
      e = errno;
      if (!err) tmp = link_tmpfile(fd, path);
      close(fd);
      if (engine_err) return -1;
      if (err)
        return moe_error("save: writing '%s' failed: %s (the previous file, if any, is unchanged)", path, strerror(e));
      /* tmp == NULL: the file could not be linked; write a named temporary instead */
    }
  }
  if (!tmp) {
    tmp = temp_name(path, 0);
    if (!tmp) return moe_error("save: out of memory");
    int fd = mkstemp(tmp);
    if (fd < 0) {
      e = errno;
      free(tmp);
      return moe_error("save: cannot create a temporary file next to '%s': %s", path, strerror(e));
    }
    fchmod(fd, 0644);
    int err = write_payload(fd, header, hlen, n, ts, &engine_err);
    e = errno;
    if (close(fd) && !err) {
      err = 1;
      e = errno;
    }
    if (err) {
      unlink(tmp);
      free(tmp);
      if (engine_err) return -1;
      return moe_error("save: writing '%s' failed: %s (the previous file, if any, is unchanged)", path, strerror(e));
    }
  }
  if (rename(tmp, path)) {
    e = errno;
    unlink(tmp);
    free(tmp);
    return moe_error("save: writing '%s' failed: %s (the previous file, if any, is unchanged)", path, strerror(e));
  }
  free(tmp);
  fsync_dir(path);
  return 0;
}

int moe_st_save(const char *path, const char *header, size_t hlen, int n, moe_tensor *const *ts) {
  return moe_st_save_ex(path, header, hlen, n, ts, 0);
}

int moe_st_read_header(const char *path, char **header, size_t *hlen, uint64_t *data_start, uint64_t *file_size) {
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
  char first = 0;
  int have_first = size > 8 && pread(fd, &first, 1, 8) == 1;
  if (n > MOE_ST_MAX_HEADER || n < 2 || (have_first && first != '{')) {
    close(fd);
    return moe_error("load: '%s' is not a safetensors file (its first 8 bytes do not give the length of a "
                     "JSON header)",
                     path);
  }
  if (n > size - 8) {
    close(fd);
    return moe_error("load: '%s' is truncated: its header claims %llu bytes but the file has %llu "
                     "after the length field",
                     path, (unsigned long long)n, (unsigned long long)(size - 8));
  }
  char *h = malloc((size_t)n + 1);
  if (!h) {
    close(fd);
    return moe_error("load: out of memory reading the header of '%s'", path);
  }
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

moe_tensor *moe_st_read_tensor_checked(const char *path, const char *name, uint64_t offset, uint64_t nbytes,
                                       moe_dtype dt, int ndim, const int64_t *shape, const uint64_t *expect) {
  char b[160];
  moe_tensor probe = {.ndim = ndim};
  if (!name) name = "?";
  if (ndim < 0 || ndim > MOE_MAX_DIMS) {
    moe_error("load: '%s': too many dims", path);
    return NULL;
  }
  memcpy(probe.shape, shape, sizeof(int64_t) * (size_t)ndim);
  uint64_t want = (uint64_t)moe_dtype_size(dt);
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0 || (shape[i] && want > UINT64_MAX / 2 / (uint64_t)shape[i])) {
      moe_error("load: '%s': tensor '%s' has a bad shape %s", path, name, moe_shape_str(&probe, b));
      return NULL;
    }
    want *= (uint64_t)shape[i];
  }
  if (want != nbytes) {
    moe_error("load: '%s': tensor '%s' (%s, shape %s) needs %llu bytes but its offsets span %llu", path, name,
              moe_dtype_name(dt), moe_shape_str(&probe, b), (unsigned long long)want, (unsigned long long)nbytes);
    return NULL;
  }
  int fd = open(path, O_RDONLY);
  if (fd < 0) {
    moe_error("load: cannot open '%s': %s", path, strerror(errno));
    return NULL;
  }
  struct stat st;
  if (fstat(fd, &st) || offset > (uint64_t)st.st_size || nbytes > (uint64_t)st.st_size - offset) {
    close(fd);
    moe_error("load: '%s' is truncated: tensor '%s' (bytes %llu..%llu) lies past its end (%lld bytes)", path, name,
              (unsigned long long)offset, (unsigned long long)(offset + nbytes), (long long)st.st_size);
    return NULL;
  }
  moe_tensor *t = moe_empty(ndim, shape, dt);
  if (!t) {
    close(fd);
    return NULL;
  }
  char *p = moe_data(t);
  uint64_t done = 0;
  while (done < nbytes) {
    ssize_t r = pread(fd, p + done, (size_t)(nbytes - done), (off_t)(offset + done));
    if (r <= 0) {
      if (r < 0 && errno == EINTR) continue;
      close(fd);
      moe_tensor_release(t);
      moe_error("load: '%s': read failed at byte %llu (tensor '%s')", path, (unsigned long long)(offset + done), name);
      return NULL;
    }
    done += (uint64_t)r;
  }
  close(fd);
  if (expect) {
    uint64_t h = moe_st_hash(p, (size_t)nbytes);
    if (h != *expect) {
      moe_error("load: '%s' is corrupted: tensor '%s' fails its checksum (XXH3-64 %016llx, the header "
                "records %016llx)",
                path, name, (unsigned long long)h, (unsigned long long)*expect);
      moe_tensor_release(t);
      return NULL;
    }
  }
  if (dt == MOE_BOOL) { /* only 0 and 1 are booleans */
    const unsigned char *u = (const unsigned char *)p;
    for (uint64_t i = 0; i < nbytes; i++)
      if (u[i] > 1) {
        moe_error("load: '%s': bool tensor '%s' holds byte value %d", path, name, u[i]);
        moe_tensor_release(t);
        return NULL;
      }
  }
  return t;
}

moe_tensor *moe_st_read_tensor(const char *path, uint64_t offset, uint64_t nbytes, moe_dtype dt, int ndim,
                               const int64_t *shape) {
  return moe_st_read_tensor_checked(path, NULL, offset, nbytes, dt, ndim, shape, NULL);
}
