/* csv_fuzz.c -- libFuzzer harness for the CSV reader (src/data/csv.c).
 *
 * The input is the bytes of a file. It is read through the C API with the
 * default options (header, commas, NA strings) and with one of four other
 * fixed option sets (no header, other separators, skipped lines, names,
 * forced column kinds), chosen by the input's size; and, gzip-compressed by
 * the harness, as a .gz file (whole, and truncated). Besides the sanitizers' checks, each result is
 * checked:
 *   - a frame that reads has consistent columns (unique non-empty names;
 *     numeric columns have values, categorical ones codes within their levels,
 *     distinct non-empty levels that are no NA string);
 *   - the plain file and its gzip compression read to the same frame, or fail
 *     with the same message;
 *   - a failure leaves a message that names read_csv.
 * A violation aborts, which libFuzzer reports as a crash.
 *
 * Build and run: `make fuzz` (see spec/fuzz/README.md). */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <zlib.h>

#include "../../src/core/moe.h"
#include "../../src/data/csv.h"

/* big allocations fail (read_csv reports "out of memory") instead of ending the run */
const char *__asan_default_options(void) { return "allocator_may_return_null=1:max_allocation_size_mb=1024"; }

static int fd = -1;
static char path[64];

static void fail(const char *what, const char *detail) {
  fprintf(stderr, "csv_fuzz: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
  abort();
}

static void put_file(const uint8_t *data, size_t size) {
  if (ftruncate(fd, 0)) fail("ftruncate", NULL);
  size_t done = 0;
  while (done < size) {
    ssize_t w = pwrite(fd, data + done, size - done, (off_t)done);
    if (w <= 0) fail("pwrite", NULL);
    done += (size_t)w;
  }
}

/* the input as one gzip member (malloc'ed) */
static uint8_t *gzip(const uint8_t *data, size_t size, size_t *out_size) {
  z_stream z;
  memset(&z, 0, sizeof z);
  if (deflateInit2(&z, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) fail("deflateInit2", NULL);
  size_t cap = deflateBound(&z, size) + 64;
  uint8_t *out = malloc(cap);
  if (!out) fail("out of memory", NULL);
  z.next_in = (Bytef *)data;
  z.avail_in = (uInt)size;
  z.next_out = out;
  z.avail_out = (uInt)cap;
  if (deflate(&z, Z_FINISH) != Z_STREAM_END) fail("deflate", NULL);
  *out_size = z.total_out;
  deflateEnd(&z);
  return out;
}

static int is_na(const moe_csv_options *o, const char *s) {
  if (!*s) return 1;
  for (int i = 0; i < o->nna; i++)
    if (!strcmp(o->na[i], s)) return 1;
  return 0;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static void check_frame(const moe_csv_options *o, const moe_csv_frame *f) {
  if (f->ncols < 1 || f->nrows < 0 || !f->cols) fail("bad frame dimensions", NULL);
  for (int c = 0; c < f->ncols; c++) {
    const moe_csv_column *col = &f->cols[c];
    if (!col->name || !col->name[0]) fail("a column without a name", NULL);
    for (int d = 0; d < c && f->ncols <= 256; d++)
      if (!strcmp(f->cols[d].name, col->name)) fail("two columns share a name", col->name);
    if (col->numeric) {
      if (!col->values || col->codes || col->nlevels) fail("numeric column with codes or without values", col->name);
    } else {
      if (!col->codes || col->values) fail("categorical column with values or without codes", col->name);
      if (col->nlevels < 0 || (col->nlevels && !col->levels)) fail("bad levels", col->name);
      for (int64_t r = 0; r < f->nrows; r++)
        if (col->codes[r] < 0 || col->codes[r] > col->nlevels) fail("a code outside the levels", col->name);
      if (col->nlevels) {
        char **sorted = malloc(sizeof *sorted * (size_t)col->nlevels);
        if (!sorted) return;
        memcpy(sorted, col->levels, sizeof *sorted * (size_t)col->nlevels);
        for (int64_t l = 0; l < col->nlevels; l++) {
          if (!sorted[l]) fail("a NULL level", col->name);
          if (is_na(o, sorted[l])) fail("a missing-value string became a level", sorted[l]);
        }
        qsort(sorted, (size_t)col->nlevels, sizeof *sorted, cmp_str);
        for (int64_t l = 1; l < col->nlevels; l++)
          if (!strcmp(sorted[l - 1], sorted[l])) fail("two equal levels", sorted[l]);
        free(sorted);
      }
    }
  }
}

static void same_frame(const moe_csv_frame *a, const moe_csv_frame *b) {
  if (a->nrows != b->nrows || a->ncols != b->ncols) fail("plain and gzip differ in shape", NULL);
  for (int c = 0; c < a->ncols; c++) {
    const moe_csv_column *x = &a->cols[c], *y = &b->cols[c];
    if (strcmp(x->name, y->name) || x->numeric != y->numeric || x->nlevels != y->nlevels)
      fail("plain and gzip differ in a column", x->name);
    size_t n = (size_t)a->nrows;
    if (x->numeric ? memcmp(x->values, y->values, n * sizeof(double)) : memcmp(x->codes, y->codes, n * sizeof(int32_t)))
      fail("plain and gzip differ in values", x->name);
    for (int64_t l = 0; l < x->nlevels; l++)
      if (strcmp(x->levels[l], y->levels[l])) fail("plain and gzip differ in levels", x->name);
  }
}

/* reads the file now in the memfd; 0 and a checked frame, or -1 and a message in msg */
static int read_one(const moe_csv_options *o, moe_csv_frame *f, char *msg, size_t msgcap) {
  if (moe_csv_read(path, o, f)) {
    const char *m = moe_last_error();
    if (strncmp(m, "read_csv: ", 10)) fail("an error that does not name read_csv", m);
    snprintf(msg, msgcap, "%s", m);
    return -1;
  }
  check_frame(o, f);
  return 0;
}

static const char *const na[] = {"NA", "?", "null"};
static const char *const names3[] = {"a", "b", "c"};
static const char *const typed[] = {"1", "2", "a"};
static const int typed_numeric[] = {1, 0, 1};

static const moe_csv_options sets[] = {
    {.header = 1, .sep = ',', .na = na, .nna = 3},
    {.header = 0, .sep = ',', .typed = typed, .typed_numeric = typed_numeric, .ntyped = 2},
    {.header = 0, .sep = ';', .skip = 1, .names = names3, .nnames = 3},
    {.header = 1, .sep = '\t', .typed = typed + 2, .typed_numeric = typed_numeric + 2, .ntyped = 1, .na = na, .nna = 1},
    {.header = 1, .sep = ' ', .skip = 2},
};

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  fd = memfd_create("csv_fuzz", 0);
  if (fd < 0) fail("memfd_create", NULL);
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size > (1 << 20)) return -1; /* the reader's cost is linear; big inputs only slow the search */
  put_file(data, size);
  char m0[1024], m1[1024];
  moe_csv_frame first;
  int rc0 = read_one(&sets[0], &first, m0, sizeof m0);
  /* one of the other option sets, fixed by the input's size (each read costs) */
  moe_csv_frame f;
  if (!read_one(&sets[1 + size % (sizeof sets / sizeof sets[0] - 1)], &f, m1, sizeof m1)) moe_csv_free(&f);
  /* the same bytes gzip-compressed read the same (unless they are gzip already) */
  if (!(size >= 2 && data[0] == 0x1f && data[1] == 0x8b)) {
    size_t gz_size;
    uint8_t *gz = gzip(data, size, &gz_size);
    put_file(gz, gz_size);
    moe_csv_frame second;
    int rc1 = read_one(&sets[0], &second, m1, sizeof m1);
    if (rc0 != rc1)
      fail(rc0 ? "the gzip file reads but the plain one fails" : "the plain file reads but the gzip one fails",
           rc0 ? m0 : m1);
    if (rc0 && strcmp(m0, m1)) {
      fprintf(stderr, "plain: %s\ngzip:  %s\n", m0, m1);
      fail("plain and gzip fail differently", NULL);
    }
    if (!rc0) {
      same_frame(&first, &second);
      moe_csv_free(&second);
    }
    /* and a truncated gzip file is an error, never a shorter frame */
    if (gz_size > 20) {
      put_file(gz, gz_size - 9);
      moe_csv_frame t;
      if (!read_one(&sets[0], &t, m1, sizeof m1)) fail("a truncated gzip file read without an error", NULL);
    }
    free(gz);
  }
  if (!rc0) moe_csv_free(&first);
  return 0;
}
