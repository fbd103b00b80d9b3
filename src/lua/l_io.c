/* l_io.c -- files: read_csv (src/data/csv.c), and the safetensors bytes under
 * lua/moe/io.lua (st_save, st_read_header, st_read_tensor, st_checksum). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "binding_impl.h"
#include "../data/safetensors.h"
#include "../data/csv.h"

/* a file path argument: a string (a number would be coerced into a file name),
 * non-empty and without NUL bytes (the C side would see a shorter name) */
static const char *check_path(lua_State *L, int idx, const char *fn) {
  if (lua_type(L, idx) != LUA_TSTRING)
    luaL_error(L, "%s: argument #%d (the path) must be a string, got %s", fn, idx, moe_l_type_of(L, idx));
  size_t n;
  const char *p = lua_tolstring(L, idx, &n);
  if (n == 0) luaL_error(L, "%s: argument #%d (the path) is an empty string", fn, idx);
  if (strlen(p) != n) luaL_error(L, "%s: argument #%d (the path) contains a NUL byte", fn, idx);
  return p;
}

/* pointers to the strings of the list at idx (none when nil), in a userdata
 * left on the stack; the strings live in the list, which is an argument */
static const char **string_list(lua_State *L, int idx, const char *what, int *n) {
  *n = 0;
  if (lua_isnoneornil(L, idx)) return NULL;
  luaL_checktype(L, idx, LUA_TTABLE);
  int len = (int)lua_objlen(L, idx);
  /* left on the stack (so the GC keeps it) until the call returns */
  const char **v = lua_newuserdata(L, sizeof(char *) * (size_t)(len ? len : 1));
  for (int i = 0; i < len; i++) {
    lua_rawgeti(L, idx, i + 1);
    if (lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "read_csv: %s must be a list of strings", what);
    v[i] = lua_tostring(L, -1);
    lua_pop(L, 1); /* the string stays alive in the list */
  }
  *n = len;
  return v;
}

/* read_csv(path, header, sep, skip, names|nil, na_values, typed_names, typed_numeric) ->
 * nrows, { {name=, values=float64 tensor} or {name=, codes=int32 tensor, levels={...}} ... } */
static int l_read_csv(lua_State *L) {
  const char *path = check_path(L, 1, "read_csv");
  moe_csv_options o = {0};
  o.header = lua_toboolean(L, 2);
  size_t seplen;
  const char *sep = luaL_checklstring(L, 3, &seplen);
  if (seplen != 1) luaL_error(L, "read_csv: sep must be one character, got '%s'", sep);
  o.sep = sep[0];
  o.skip = moe_l_check_int(L, 4, "read_csv", "skip");
  if (o.skip < 0) luaL_error(L, "read_csv: skip must be >= 0, got %d", (int)o.skip);
  o.names = string_list(L, 5, "columns", &o.nnames);
  o.na = string_list(L, 6, "na_values", &o.nna);
  o.typed = string_list(L, 7, "dtypes", &o.ntyped);
  int *flags = NULL;
  if (o.ntyped) {
    luaL_checktype(L, 8, LUA_TTABLE);
    flags = lua_newuserdata(L, sizeof(int) * (size_t)o.ntyped);
    for (int i = 0; i < o.ntyped; i++) {
      lua_rawgeti(L, 8, i + 1);
      flags[i] = lua_toboolean(L, -1);
      lua_pop(L, 1);
    }
  }
  o.typed_numeric = flags;
  moe_csv_frame f;
  if (moe_csv_read(path, &o, &f)) return moe_l_raise_engine(L);
  /* from here nothing may raise before f is freed: build tensors first */
  moe_tensor **ts = calloc((size_t)f.ncols, sizeof *ts);
  int ok = ts != NULL;
  for (int c = 0; ok && c < f.ncols; c++) {
    int64_t shape[1] = {f.nrows};
    moe_csv_column *col = &f.cols[c];
    ts[c] = moe_empty(1, shape, col->numeric ? MOE_F64 : MOE_I32);
    if (!ts[c]) {
      ok = 0;
      break;
    }
    if (f.nrows)
      memcpy(moe_data(ts[c]), col->numeric ? (void *)col->values : (void *)col->codes,
             (size_t)f.nrows * (col->numeric ? sizeof(double) : sizeof(int32_t)));
  }
  if (!ok) {
    for (int c = 0; ts && c < f.ncols; c++) moe_tensor_release(ts[c]);
    free(ts);
    moe_csv_free(&f);
    return luaL_error(L, "read_csv: out of memory");
  }
  lua_pushnumber(L, (lua_Number)f.nrows);
  lua_createtable(L, f.ncols, 0);
  for (int c = 0; c < f.ncols; c++) {
    moe_csv_column *col = &f.cols[c];
    lua_createtable(L, 0, 3);
    lua_pushstring(L, col->name);
    lua_setfield(L, -2, "name");
    moe_l_box_tensor(L, ts[c]);
    ts[c] = NULL;
    lua_setfield(L, -2, col->numeric ? "values" : "codes");
    if (!col->numeric) {
      lua_createtable(L, (int)col->nlevels, 0);
      for (int64_t l = 0; l < col->nlevels; l++) {
        lua_pushstring(L, col->levels[l]);
        lua_rawseti(L, -2, (int)l + 1);
      }
      lua_setfield(L, -2, "levels");
    }
    lua_rawseti(L, -2, c + 1);
  }
  free(ts);
  moe_csv_free(&f);
  return 2;
}

/* ---------------------------------------------------------------- safetensors bytes */

/* st_save(path, header, tensors[, named_temp]): named_temp skips O_TMPFILE (the fallback, for tests) */
static int l_st_save(lua_State *L) {
  const char *path = check_path(L, 1, "save");
  size_t hlen;
  const char *header = luaL_checklstring(L, 2, &hlen);
  luaL_checktype(L, 3, LUA_TTABLE);
  int n = (int)lua_objlen(L, 3);
  moe_tensor **ts = lua_newuserdata(L, sizeof(moe_tensor *) * (size_t)(n ? n : 1));
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, 3, i + 1);
    ts[i] = moe_lua_totensor(L, -1);
    lua_pop(L, 1);
    if (!ts[i]) return luaL_error(L, "save: entry %d is not a tensor", i + 1);
    if (ts[i]->device != MOE_CPU)
      return luaL_error(L, "save: entry %d is a CUDA tensor (save copies to the host first)", i + 1);
  }
  if (moe_st_save_ex(path, header, hlen, n, ts, lua_toboolean(L, 4) ? MOE_ST_NAMED_TEMP : 0))
    return moe_l_raise_engine(L);
  return 0;
}

/* st_checksum(string or host tensor) -> 16 hex digits of its XXH3-64 (a tensor's bytes as saved) */
static int l_st_checksum(lua_State *L) {
  uint64_t h;
  char hex[17];
  if (lua_type(L, 1) == LUA_TSTRING) {
    size_t n;
    const char *s = lua_tolstring(L, 1, &n);
    h = moe_st_hash(s, n);
  } else {
    moe_tensor *t = moe_lua_totensor(L, 1);
    if (!t) return luaL_error(L, "st_checksum: expected a string or a tensor, got %s", luaL_typename(L, 1));
    if (moe_st_tensor_hash(t, &h)) return moe_l_raise_engine(L);
  }
  snprintf(hex, sizeof hex, "%016llx", (unsigned long long)h);
  lua_pushstring(L, hex);
  return 1;
}

static int l_st_read_header(lua_State *L) {
  const char *path = check_path(L, 1, "load");
  char *h;
  size_t hlen;
  uint64_t start, size;
  if (moe_st_read_header(path, &h, &hlen, &start, &size)) return moe_l_raise_engine(L);
  lua_pushlstring(L, h, hlen);
  free(h);
  lua_pushnumber(L, (lua_Number)start);
  lua_pushnumber(L, (lua_Number)size);
  return 3;
}

/* st_read_tensor(path, offset, nbytes, dtype, shape[, name, checksum]): with checksum
 * (16 hex digits), the bytes read must hash to it */
static int l_st_read_tensor(lua_State *L) {
  const char *path = check_path(L, 1, "load");
  double off = luaL_checknumber(L, 2), nb = luaL_checknumber(L, 3);
  moe_dtype dt;
  if (moe_dtype_from_name(luaL_checkstring(L, 4), &dt)) return luaL_error(L, "load: bad dtype");
  luaL_checktype(L, 5, LUA_TTABLE);
  const char *name = luaL_optstring(L, 6, "?");
  uint64_t expect = 0;
  int have = !lua_isnoneornil(L, 7);
  if (have) {
    size_t hl;
    const char *hex = luaL_checklstring(L, 7, &hl);
    char *end;
    errno = 0;
    expect = strtoull(hex, &end, 16);
    if (hl != 16 || errno || end != hex + 16 || hex[0] == '-' || hex[0] == '+' || hex[0] == ' ')
      return luaL_error(L, "load: '%s': tensor '%s' has a malformed checksum '%s'", path, name, hex);
  }
  int ndim = (int)lua_objlen(L, 5);
  if (ndim > MOE_MAX_DIMS)
    return luaL_error(L, "load: '%s': a tensor has %d dims (at most %d)", path, ndim, MOE_MAX_DIMS);
  int64_t shape[MOE_MAX_DIMS];
  for (int i = 0; i < ndim; i++) {
    lua_rawgeti(L, 5, i + 1);
    shape[i] = moe_l_check_int(L, -1, "load", "a size");
    lua_pop(L, 1);
  }
  if (off < 0 || nb < 0 || off > 9e15 || nb > 9e15) return luaL_error(L, "load: '%s': bad offsets", path);
  return moe_lua_push(
      L, moe_st_read_tensor_checked(path, name, (uint64_t)off, (uint64_t)nb, dt, ndim, shape, have ? &expect : NULL));
}

const luaL_Reg moe_l_io_funcs[] = {{"st_save", l_st_save},
                                   {"read_csv", l_read_csv},
                                   {"st_read_header", l_st_read_header},
                                   {"st_read_tensor", l_st_read_tensor},
                                   {"st_checksum", l_st_checksum},
                                   {NULL, NULL}};
