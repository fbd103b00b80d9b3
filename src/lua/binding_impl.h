/* binding_impl.h -- what the files of the `moe.core` binding share (private to src/lua/).
 *
 * binding.c opens the module: it runs every function of the domains' luaL_Reg
 * tables (declared at the end of this header) through `tramp` and builds the
 * tensor metatable. common.c holds what the domains all use, declared here:
 * the errors that name the user's call, the tensor boxes, the device of an op
 * and the argument helpers. The domains, each with its tables:
 *   l_create.c    creation (zeros, rand, arange, ...), tensors from nested tables, manual_seed
 *   l_tensor.c    info, views, copies, device moves, indexing (the __index/__newindex/__len metamethods)
 *   l_ops.c       elementwise math, reductions and scans, matmul, sort, gather/scatter, cat/stack
 *   l_autograd.c  backward, detach, grad mode, gradcheck's flat probes
 *   l_optim.c     the fused optimizer step
 *   l_nn.c        fused layer ops: linear, bce, mixture, gate_scale, route_plan, grouped_matmul
 *   l_train.c     fit{}'s epoch order and batch gathering, ROC-AUC
 *   l_io.c        safetensors bytes, CSV
 *   l_sys.c       BLAS/sgemm/bf16/CUDA information and choices, backend kernels, memory, interrupts
 *   l_dist.c      moe.distributed's collectives (src/dist/), the CPU thread count
 * Shared names start with moe_l_; what only one file uses stays static there. */
#ifndef MOE_BINDING_IMPL_H
#define MOE_BINDING_IMPL_H

#include <lauxlib.h>
#include <lua.h>

#include <stddef.h>
#include <stdint.h>

#include "../core/moe.h"
#include "binding.h"

#define IBASE 1
#define MT_NAME "moe.Tensor"

/* ---------------------------------------------------------------- errors (common.c)
 * Every error raised by the binding carries the user's own file and line (the
 * first Lua frame outside the moe library, not the C function or a library
 * wrapper) and names the function the user called: `tramp` (binding.c) keeps
 * the name of the running function in moe_l_cur_op, and the argument checks
 * use it instead of Lua's "bad argument #1 to '?'". luaL_error and the
 * luaL_check* helpers are redefined here, so every check in the binding's
 * files goes through them. */
extern const char *moe_l_cur_op;
extern char moe_l_lib_dir[1024]; /* the library's directory as its chunks name it ("lua/moe/") */

int moe_l_errorf(lua_State *L, const char *fmt, ...);
#define luaL_error moe_l_errorf

const char *moe_l_type_of(lua_State *L, int idx); /* "tensor", or the Lua type's name */
lua_Number moe_l_chk_number(lua_State *L, int i);
const char *moe_l_chk_lstring(lua_State *L, int i, size_t *len);
void moe_l_chk_type(lua_State *L, int i, int t);
int moe_l_chk_option(lua_State *L, int i, const char *def, const char *const lst[]);
#define luaL_checknumber(L, i) moe_l_chk_number(L, i)
#undef luaL_checkstring
#define luaL_checkstring(L, i) moe_l_chk_lstring(L, i, NULL)
#define luaL_checklstring(L, i, n) moe_l_chk_lstring(L, i, n)
#define luaL_checktype(L, i, t) moe_l_chk_type(L, i, t)
#define luaL_checkoption(L, i, d, l) moe_l_chk_option(L, i, d, l)

int moe_l_raise_engine(lua_State *L); /* raises moe_last_error() */

/* ---------------------------------------------------------------- boxes (common.c)
 * A Lua tensor is a userdata box holding one reference to a moe_tensor,
 * released in __gc (moe_l_t_gc). moe_lua_push and moe_lua_totensor are in binding.h. */
typedef struct {
  moe_tensor *t;
} box;

extern int moe_l_mt_ref;         /* the tensor metatable, in the registry */
extern const void *moe_l_mt_ptr; /* ... and its address, for a fast identity check */

void moe_l_box_tensor(lua_State *L, moe_tensor *t); /* boxes t (owned by the GC from here) */
void moe_l_after_push(lua_State *L);                /* after boxing: a pending Ctrl-C, the GC nudge */
extern lua_State *moe_l_L;    /* the state of the running binding function (set by binding.c's tramp) */
void moe_l_oom_collect(void); /* the CUDA allocator's out-of-memory hook: a full Lua collection */
int moe_l_push_pair(lua_State *L, int rc, moe_tensor *v, moe_tensor *i); /* (values, indices) */
int moe_l_t_gc(lua_State *L);

/* ---------------------------------------------------------------- the device of an op (common.c)
 * `tramp` resets moe_l_op_dev before each call; the first tensor argument
 * fixes the op's device and a later argument on another device is an error. */
extern int moe_l_op_dev;
const char *moe_l_dev_name(int d);
int moe_l_join_device(const moe_tensor *t);                                /* 0 if t is on the op's device */
moe_tensor *moe_l_check_tensor_any(lua_State *L, int idx, const char *op); /* any device */
moe_tensor *moe_l_check_tensor(lua_State *L, int idx, const char *op);     /* on the op's device */
moe_tensor *moe_l_opt_tensor(lua_State *L, int idx, const char *op);       /* NULL if not a tensor */
moe_tensor *moe_l_check_host(lua_State *L, int idx, const char *op);       /* on the CPU */
moe_tensor *moe_l_host_values(lua_State *L, moe_tensor *t);                /* a host copy to read */

/* ---------------------------------------------------------------- argument helpers (common.c) */
int64_t moe_l_check_int(lua_State *L, int idx, const char *op, const char *what);
int moe_l_norm_dim(lua_State *L, moe_tensor *t, int64_t d, const char *op, int extra);
int moe_l_check_dim_arg(lua_State *L, int idx, moe_tensor *t, const char *op, int extra);
int moe_l_opt_dim_arg(lua_State *L, int idx, moe_tensor *t, const char *op, int dflt);

typedef struct {
  moe_dtype dtype;
  int has_dtype;
  int requires_grad;
  moe_device device; /* the option, else the default device (moe.set_default_device) */
  int has_device;
} create_opts;
/* the device creation functions put new tensors on (core.set_default_device) */
extern moe_device moe_l_default_device;
create_opts moe_l_parse_opts(lua_State *L, int idx, const char *op, moe_dtype dflt);
moe_precision moe_l_opt_precision(lua_State *L, int i, const char *op);

/* ---------------------------------------------------------------- shared by two domains */
int moe_l_set_requires_grad(lua_State *L, moe_tensor *t, int on); /* l_tensor.c */

/* ---------------------------------------------------------------- what binding.c registers */
/* the ops made once per op code: upvalue 1 of their closure is the code (l_ops.c) */
int moe_l_binary(lua_State *L);  /* moe_binop */
int moe_l_binary_(lua_State *L); /* moe_binop, in place */
int moe_l_unary(lua_State *L);   /* moe_unop */
int moe_l_reduce(lua_State *L);  /* moe_redop */
int moe_l_scan(lua_State *L);    /* moe_scanop */
/* the tensor metatable's __index (upvalue 1: the methods), __newindex and __len (l_tensor.c) */
int moe_l_t_index(lua_State *L);
int moe_l_t_newindex(lua_State *L);
int moe_l_t_len(lua_State *L);

/* module functions (*_funcs) and the functions that are also tensor methods (*_methods) */
extern const luaL_Reg moe_l_create_funcs[];
extern const luaL_Reg moe_l_tensor_funcs[], moe_l_tensor_methods[];
extern const luaL_Reg moe_l_ops_funcs[], moe_l_ops_methods[];
extern const luaL_Reg moe_l_autograd_funcs[], moe_l_autograd_methods[];
extern const luaL_Reg moe_l_optim_funcs[];
extern const luaL_Reg moe_l_nn_funcs[];
extern const luaL_Reg moe_l_train_funcs[];
extern const luaL_Reg moe_l_io_funcs[];
extern const luaL_Reg moe_l_sys_funcs[];
extern const luaL_Reg moe_l_dist_funcs[];

#endif
