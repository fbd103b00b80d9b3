/* csv.c -- see csv.h. One pass reads the whole file through zlib (which also
 * reads plain files), a second splits it into fields in place (quotes are
 * undone inside the buffer), a third types and stores each column. */
#include "csv.h"

#include "../core/moe.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

typedef struct {
  int64_t off;
  int32_t len;
} field;

typedef struct {
  char *buf;
  size_t n;
  field *f; /* every field of every record, row-major */
  int64_t nf, capf;
  int64_t *line; /* physical line where each record starts */
  int64_t nrec, capline, capcount;
  int *count; /* fields per record */
} parse;

static int grow(void **p, int64_t *cap, int64_t need, size_t size) {
  if (need <= *cap) return 0;
  int64_t c = *cap ? *cap : 1024;
  while (c < need) c *= 2;
  void *q = realloc(*p, (size_t)c * size);
  if (!q) return -1;
  *p = q;
  *cap = c;
  return 0;
}

static int read_all(const char *path, char **out, size_t *n) {
  errno = 0;
  gzFile f = gzopen(path, "rb");
  if (!f) return moe_error("read_csv: cannot open %s (%s)", path, errno ? strerror(errno) : "out of memory");
  gzbuffer(f, 1 << 17);
  size_t cap = 1 << 20, len = 0;
  char *b = malloc(cap);
  for (;;) {
    if (!b) {
      gzclose(f);
      return moe_error("read_csv: out of memory reading %s", path);
    }
    if (cap - len < (1 << 16)) {
      char *nb = realloc(b, cap * 2);
      if (!nb) {
        free(b);
        b = NULL;
        continue;
      }
      b = nb;
      cap *= 2;
    }
    int got = gzread(f, b + len, (unsigned)(cap - len - 1));
    if (got < 0) {
      int e;
      const char *msg = gzerror(f, &e);
      moe_error("read_csv: %s: %s", path, e == Z_ERRNO ? strerror(errno) : msg);
      free(b);
      gzclose(f);
      return -1;
    }
    len += (size_t)got;
    if (got == 0) break;
  }
  int e;
  const char *msg = gzerror(f, &e);
  if (e != Z_OK && e != Z_STREAM_END) { /* a truncated gzip stream reads as a short file plus this */
    moe_error("read_csv: %s: %s (is the gzip file truncated?)", path, msg);
    free(b);
    gzclose(f);
    return -1;
  }
  gzclose(f);
  b[len] = '\0';
  *out = b;
  *n = len;
  return 0;
}

/* spaces and tabs around fields are trimmed (a tab that separates is no blank) */
static char sep_char;
static int is_blank(char c) { return (c == ' ' || c == '\t') && c != sep_char; }

/* splits p->buf into records and fields; skip lines first */
static int tokenize(parse *p, const char *path, char sep, int64_t skip) {
  char *s = p->buf, *end = p->buf + p->n;
  int64_t line = 1;
  while (skip > 0 && s < end) {
    if (*s++ == '\n') {
      line++;
      skip--;
    }
  }
  while (s < end) {
    /* a blank line is no record */
    char *t = s;
    while (t < end && (is_blank(*t) || *t == '\r')) t++;
    if (t == end) break;
    if (*t == '\n') {
      s = t + 1;
      line++;
      continue;
    }
    if (grow((void **)&p->line, &p->capline, p->nrec + 1, sizeof *p->line) ||
        grow((void **)&p->count, &p->capcount, p->nrec + 1, sizeof *p->count))
      return moe_error("read_csv: out of memory");
    int64_t start_line = line;
    int nfields = 0;
    for (;;) { /* one field */
      while (s < end && is_blank(*s)) s++;
      char *w = s, *fstart = s;
      int64_t col = nfields + 1;
      if (s < end && *s == '"') {
        s++;
        for (;;) {
          if (s >= end)
            return moe_error("read_csv: %s line %lld, column %lld: unterminated quoted field", path,
                             (long long)start_line, (long long)col);
          if (*s == '"') {
            if (s + 1 < end && s[1] == '"') {
              *w++ = '"';
              s += 2;
              continue;
            }
            s++;
            break;
          }
          if (*s == '\n') line++;
          *w++ = *s++;
        }
        while (s < end && (is_blank(*s) || *s == '\r')) s++;
        if (s < end && *s != sep && *s != '\n')
          return moe_error("read_csv: %s line %lld, column %lld: text after a closing quote", path, (long long)line,
                           (long long)col);
      } else {
        while (s < end && *s != sep && *s != '\n') s++;
        w = s;
        while (w > fstart && (is_blank(w[-1]) || w[-1] == '\r')) w--;
      }
      if ((int64_t)(w - fstart) > INT32_MAX)
        return moe_error("read_csv: %s line %lld, column %lld: a field of over 2 GiB", path, (long long)line,
                         (long long)col);
      if (grow((void **)&p->f, &p->capf, p->nf + 1, sizeof *p->f)) return moe_error("read_csv: out of memory");
      p->f[p->nf].off = fstart - p->buf;
      p->f[p->nf].len = (int32_t)(w - fstart);
      p->nf++;
      nfields++;
      if (s < end && *s == sep) {
        s++;
        continue;
      }
      break; /* newline or end */
    }
    if (s < end) {
      s++;
      line++;
    } /* the newline */
    p->line[p->nrec] = start_line;
    p->count[p->nrec] = nfields;
    p->nrec++;
  }
  return 0;
}

/* ---------------------------------------------------------------- interning */

typedef struct {
  int64_t *slot; /* level index + 1, 0 = empty */
  int64_t cap;
} table;

static uint64_t hash(const char *s, int32_t n) {
  uint64_t h = 1469598103934665603ull;
  for (int32_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
  return h;
}

static char *dup_n(const char *s, int32_t n) {
  char *d = malloc((size_t)n + 1);
  if (d) {
    memcpy(d, s, (size_t)n);
    d[n] = '\0';
  }
  return d;
}

/* the 1-based level of field (s, n), added when new; -1 on out of memory */
static int64_t intern(table *t, moe_csv_column *c, const char *s, int32_t n) {
  if ((c->nlevels + 1) * 2 > t->cap) {
    int64_t nc = t->cap ? t->cap * 2 : 64;
    int64_t *ns = calloc((size_t)nc, sizeof *ns);
    if (!ns) return -1;
    for (int64_t i = 0; i < t->cap; i++)
      if (t->slot[i]) {
        const char *l = c->levels[t->slot[i] - 1];
        uint64_t j = hash(l, (int32_t)strlen(l)) & (uint64_t)(nc - 1);
        while (ns[j]) j = (j + 1) & (uint64_t)(nc - 1);
        ns[j] = t->slot[i];
      }
    free(t->slot);
    t->slot = ns;
    t->cap = nc;
  }
  uint64_t j = hash(s, n) & (uint64_t)(t->cap - 1);
  while (t->slot[j]) {
    const char *l = c->levels[t->slot[j] - 1];
    if ((int32_t)strlen(l) == n && memcmp(l, s, (size_t)n) == 0) return t->slot[j];
    j = (j + 1) & (uint64_t)(t->cap - 1);
  }
  char **nl = realloc(c->levels, sizeof *nl * (size_t)(c->nlevels + 1));
  if (!nl) return -1;
  c->levels = nl;
  if (!(c->levels[c->nlevels] = dup_n(s, n))) return -1;
  c->nlevels++;
  t->slot[j] = c->nlevels;
  return c->nlevels;
}

/* ---------------------------------------------------------------- columns */

static int is_na(const moe_csv_options *o, const char *s, int32_t n) {
  if (n == 0) return 1;
  for (int i = 0; i < o->nna; i++)
    if ((int32_t)strlen(o->na[i]) == n && memcmp(o->na[i], s, (size_t)n) == 0) return 1;
  return 0;
}

/* the number in field (s, n) (NUL-terminated copy made if needed), or 0 if none */
static int to_number(const char *s, int32_t n, double *v) {
  char small[64], *copy = small;
  if (n >= (int32_t)sizeof small) {
    if (n > 4096) return 0; /* no number is that long */
    copy = malloc((size_t)n + 1);
    if (!copy) return 0;
  }
  memcpy(copy, s, (size_t)n);
  copy[n] = '\0';
  char *e;
  *v = strtod(copy, &e);
  int ok = e == copy + n;
  if (copy != small) free(copy);
  return ok;
}

void moe_csv_free(moe_csv_frame *f) {
  if (!f || !f->cols) return;
  for (int i = 0; i < f->ncols; i++) {
    moe_csv_column *c = &f->cols[i];
    free(c->name);
    free(c->values);
    free(c->codes);
    for (int64_t l = 0; l < c->nlevels; l++) free(c->levels[l]);
    free(c->levels);
  }
  free(f->cols);
  f->cols = NULL;
  f->ncols = 0;
  f->nrows = 0;
}

/* a set of names (open addressing over indices into `names`): the duplicate
 * column check and the typed-column lookup stay linear in the number of columns */
typedef struct {
  int32_t *slot; /* index + 1, 0 = empty */
  uint64_t mask;
} name_set;

static int name_set_init(name_set *h, int64_t n) {
  uint64_t cap = 16;
  while (cap < (uint64_t)n * 2) cap *= 2;
  h->slot = calloc(cap, sizeof *h->slot);
  h->mask = cap - 1;
  return h->slot ? 0 : -1;
}

/* the index of name in the set, or -1; with add, name (as index i) goes in when absent */
static int32_t name_set_find(name_set *h, const char *const *names, const char *name, int32_t add) {
  int32_t n = (int32_t)strlen(name);
  uint64_t j = hash(name, n) & h->mask;
  while (h->slot[j]) {
    if (strcmp(names[h->slot[j] - 1], name) == 0) return h->slot[j] - 1;
    j = (j + 1) & h->mask;
  }
  if (add >= 0) h->slot[j] = add + 1;
  return -1;
}

static int build_columns(parse *p, const char *path, const moe_csv_options *o, moe_csv_frame *out, name_set *seen,
                         const char **col_names, name_set *typed);

static int build(parse *p, const char *path, const moe_csv_options *o, moe_csv_frame *out) {
  if (p->nrec == 0) return moe_error("read_csv: %s has no rows%s", path, o->header ? " (not even a header)" : "");
  name_set seen = {0}, typed = {0};
  const char **col_names = calloc((size_t)p->count[0] + 1, sizeof *col_names);
  int rc;
  if (!col_names || name_set_init(&seen, p->count[0]) || name_set_init(&typed, o->ntyped)) {
    rc = moe_error("read_csv: out of memory");
  } else {
    for (int t = 0; t < o->ntyped; t++) name_set_find(&typed, o->typed, o->typed[t], t);
    rc = build_columns(p, path, o, out, &seen, col_names, &typed);
  }
  free(col_names);
  free(seen.slot);
  free(typed.slot);
  return rc;
}

static int build_columns(parse *p, const char *path, const moe_csv_options *o, moe_csv_frame *out, name_set *seen,
                         const char **col_names, name_set *typed) {
  int ncols = p->count[0];
  for (int64_t r = 1; r < p->nrec; r++)
    if (p->count[r] != ncols)
      return moe_error("read_csv: %s line %lld: expected %d fields, found %d", path, (long long)p->line[r], ncols,
                       p->count[r]);
  if (!o->header && o->names && o->nnames != ncols)
    return moe_error("read_csv: %s has %d columns but %d names were given", path, ncols, o->nnames);
  int64_t first = o->header ? 1 : 0, nrows = p->nrec - first;
  out->cols = calloc((size_t)ncols, sizeof *out->cols);
  if (!out->cols) return moe_error("read_csv: out of memory");
  out->ncols = ncols;
  out->nrows = nrows;
  for (int c = 0; c < ncols; c++) {
    moe_csv_column *col = &out->cols[c];
    if (o->header) col->name = dup_n(p->buf + p->f[c].off, p->f[c].len);
    else if (o->names) col->name = dup_n(o->names[c], (int32_t)strlen(o->names[c]));
    else {
      char nb[24];
      snprintf(nb, sizeof nb, "%d", c + 1);
      col->name = dup_n(nb, (int32_t)strlen(nb));
    }
    if (!col->name) return moe_error("read_csv: out of memory");
    if (!col->name[0]) return moe_error("read_csv: %s: column %d has an empty name", path, c + 1);
    col_names[c] = col->name;
    int32_t d = name_set_find(seen, col_names, col->name, c);
    if (d >= 0) return moe_error("read_csv: %s: columns %d and %d are both named '%s'", path, d + 1, c + 1, col->name);
    int32_t ti = name_set_find(typed, o->typed, col->name, -1);
    int forced = ti >= 0 ? o->typed_numeric[ti] : -1;
    /* numeric unless forced otherwise or some field is not a number: one pass
     * parses the values, and gives up at the first field that is not one */
    int numeric = forced != 0;
    if (numeric) {
      col->values = malloc(sizeof(double) * (size_t)(nrows ? nrows : 1));
      if (!col->values) return moe_error("read_csv: out of memory");
      for (int64_t r = 0; r < nrows && numeric; r++) {
        field f = p->f[(first + r) * ncols + c];
        const char *s = p->buf + f.off;
        double v = NAN;
        if (!is_na(o, s, f.len) && !to_number(s, f.len, &v)) {
          if (forced == 1) {
            int32_t shown = f.len > 40 ? 40 : f.len;
            return moe_error("read_csv: %s line %lld, column '%s': '%.*s%s' is not a number", path,
                             (long long)p->line[first + r], col->name, (int)shown, s, f.len > 40 ? "..." : "");
          }
          numeric = 0;
        }
        col->values[r] = v;
      }
      if (!numeric) {
        free(col->values);
        col->values = NULL;
      }
    }
    col->numeric = numeric;
    if (!numeric) {
      col->codes = malloc(sizeof(int32_t) * (size_t)(nrows ? nrows : 1));
      if (!col->codes) return moe_error("read_csv: out of memory");
      table t = {0};
      for (int64_t r = 0; r < nrows; r++) {
        field f = p->f[(first + r) * ncols + c];
        const char *s = p->buf + f.off;
        int64_t code = 0;
        if (!is_na(o, s, f.len) && (code = intern(&t, col, s, f.len)) < 0) {
          free(t.slot);
          return moe_error("read_csv: out of memory");
        }
        if (code > INT32_MAX) {
          free(t.slot);
          return moe_error("read_csv: %s column '%s' has over 2^31 distinct values", path, col->name);
        }
        col->codes[r] = (int32_t)code;
      }
      free(t.slot);
    }
  }
  return 0;
}

int moe_csv_read(const char *path, const moe_csv_options *o, moe_csv_frame *out) {
  memset(out, 0, sizeof *out);
  if (o->sep == '"' || o->sep == '\n' || o->sep == '\r' || o->sep == '\0')
    return moe_error("read_csv: the separator cannot be a quote, a newline or NUL");
  sep_char = o->sep;
  parse p = {0};
  if (read_all(path, &p.buf, &p.n)) return -1;
  /* a NUL would cut a field's text short (two different fields, one level) */
  const char *nul = memchr(p.buf, '\0', p.n);
  if (nul) {
    int64_t line = 1;
    for (const char *s = p.buf; s < nul; s++) line += *s == '\n';
    free(p.buf);
    return moe_error("read_csv: %s line %lld: a NUL byte (not a text file?)", path, (long long)line);
  }
  int rc = tokenize(&p, path, o->sep, o->skip);
  if (!rc) rc = build(&p, path, o, out);
  free(p.buf);
  free(p.f);
  free(p.line);
  free(p.count);
  if (rc) moe_csv_free(out);
  return rc;
}
