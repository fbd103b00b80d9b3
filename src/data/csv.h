/* csv.h -- delimited text files (plain or gzip) read into typed columns.
 *
 * A column is numeric when every field that is not missing parses as a number
 * (or when the caller says so), and categorical otherwise: its fields are then
 * interned into levels (in order of first appearance) and stored as 1-based
 * codes, 0 for a missing field. Numeric missing fields are NaN. Fields are
 * trimmed of spaces and tabs; a field may be double-quoted ("" is a quote, and
 * a quoted field may hold separators and newlines). Every malformed input is an
 * error that names the file, the line and (where it applies) the column. */
#ifndef MOE_CSV_H
#define MOE_CSV_H

#include <stdint.h>

typedef struct {
  char *name;
  int numeric;
  double *values; /* numeric: nrows values, NaN where missing */
  int32_t *codes; /* categorical: nrows codes, 1-based into levels, 0 where missing */
  char **levels;
  int64_t nlevels;
} moe_csv_column;

typedef struct {
  int64_t nrows;
  int ncols;
  moe_csv_column *cols;
} moe_csv_frame;

typedef struct {
  int header; /* first (non-skipped) line holds the column names */
  char sep;
  int64_t skip;             /* lines skipped before anything else */
  const char *const *names; /* ncols names (header = 0), or NULL: "1", "2", ... */
  int nnames;
  const char *const *na; /* fields that mean "missing" (after trimming); "" always does */
  int nna;
  const char *const *typed; /* columns whose kind the caller fixes ... */
  const int *typed_numeric; /* ... 1 numeric, 0 categorical */
  int ntyped;
} moe_csv_options;

/* 0, or -1 with the message in moe_last_error(); out is freed on failure */
int moe_csv_read(const char *path, const moe_csv_options *opt, moe_csv_frame *out);
void moe_csv_free(moe_csv_frame *f);

#endif
