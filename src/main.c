/* main.c -- the `moelua` host: run scripts, evaluate -e code, and the REPL.
 *
 *   moelua                      REPL (moe preloaded); piped stdin runs without the line editor
 *   moelua run script.lua ...   run a script; `arg` is set as the lua interpreter does
 *   moelua script.lua ...       the same, so moelua can be busted's --lua interpreter
 *   moelua -e 'code'            run code (repeatable); -i: REPL afterwards; -v/--version; -h/--help
 *   moelua doc NAME...          the documentation of NAME (lua/moe/doc.lua), as help(x) prints it
 *
 * Like lua.c, the host is a second place (besides src/lua/) that talks to Lua. */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <editline/readline.h>
#include <lauxlib.h>
#include <lua.h>
#include <luajit.h>
#include <lualib.h>

#include "lua/binding.h"
#include "cpu/blas_select.h"
#include "cpu/sgemm_lib.h"

#ifndef MOE_VERSION
#define MOE_VERSION "dev"
#endif
/* the directory holding moe/init.lua, set by the Makefile: the checkout's lua/
 * for build/moelua, LUADIR for `make install` (src/lua/binding.c: the search order) */
#ifndef MOELUA_LUADIR
#define MOELUA_LUADIR ""
#endif

static lua_State *gL;
static const char *progname = "moelua";
static volatile sig_atomic_t in_readline = 0, input_cancelled = 0;

/* ---------------------------------------------------------------- BLAS kernels */

/* The fastest correct BLAS kernels without user tuning: OpenBLAS picked its
 * kernel set when it loaded (before main); if cpuid says the CPU supports a
 * better one (OpenBLAS does not recognise every CPU, and falls back to SSE3),
 * run again with OPENBLAS_CORETYPE set, once (MOELUA_BLAS_CHOSEN records the
 * BLAS's own pick for the report). A user's OPENBLAS_CORETYPE is kept. */
static void choose_blas_kernels(char **argv) {
  moe_blas_status st;
  const char *before = getenv("MOELUA_BLAS_CHOSEN"), *asked = getenv("OPENBLAS_CORETYPE");
  if (before) {
    /* re-executed: if this BLAS was built without the kernel set asked for, try the next one down */
    if (!asked) return;
    moe_blas_status_get(&st);
    if (!strcasecmp(asked, st.kernels)) return;
    const char *next = moe_blas_next_lower(&st.cpu, asked, moe_blas_core_rank(before));
    if (!next) return;
    setenv("OPENBLAS_CORETYPE", next, 1);
    execv("/proc/self/exe", argv);
    return;
  }
  moe_blas_status_get(&st);
  const char *why;
  /* MOELUA_BLAS_PRETEND=Prescott: act as if the BLAS had picked that (the specs'
   * way to run this path on a machine OpenBLAS recognises) */
  const char *pretend = getenv("MOELUA_BLAS_PRETEND");
  const char *have = pretend && *pretend ? pretend : st.kernels;
  const char *pick = moe_blas_choose(&st.cpu, have, getenv("OPENBLAS_CORETYPE"), &why);
  if (!pick) return;
  setenv("OPENBLAS_CORETYPE", pick, 1);
  setenv("MOELUA_BLAS_CHOSEN", have, 1);
  execv("/proc/self/exe", argv);
  unsetenv("OPENBLAS_CORETYPE"); /* no re-execution here: the BLAS's choice stays (moe.config() says why) */
  unsetenv("MOELUA_BLAS_CHOSEN");
}

static void print_blas_line(FILE *f) {
  moe_blas_status st;
  moe_blas_status_get(&st);
  fprintf(f, "BLAS: %s kernels (%s)\n", st.kernels, st.reason);
  char desc[1200];
  moe_sgemm_describe(desc, sizeof desc, 1);
  fprintf(f, "sgemm: %s\n", desc);
}

/* ---------------------------------------------------------------- interrupts */

static void stop_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_sethook(L, NULL, 0, 0);
  luaL_error(L, "interrupted");
}

static void on_sigint(int sig) {
  (void)sig;
  if (in_readline) {
    input_cancelled = 1;
    return;
  }
  if (moe_lua_defer && !moe_lua_deferred) { /* fit stops after the current batch */
    moe_lua_deferred = 1;
    return;
  }
  if (moe_lua_interrupted) { /* the first Ctrl-C has not landed: a second one quits */
    static const char msg[] = "\nmoelua: interrupted twice, exiting\n";
    ssize_t w = write(2, msg, sizeof msg - 1);
    (void)w;
    _exit(130);
  }
  /* stop the running code at its next Lua call/return/instruction, or its next tensor op */
  moe_lua_interrupted = 1;
  lua_sethook(gL, stop_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
}

static void set_sigint(void (*handler)(int)) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = handler;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0; /* no SA_RESTART: a read at the prompt returns EINTR */
  sigaction(SIGINT, &sa, NULL);
}

/* ---------------------------------------------------------------- running code */

/* does msg start with a position, "file:line: "? (a ": " before one ends the search:
 * "fit: ... 12:30: " is a message, not a position) */
static int has_position(const char *msg) {
  for (const char *c = strchr(msg, ':'); c; c = strchr(c + 1, ':')) {
    const char *p = c + 1;
    if (*p == ' ' || *p == '\n') return 0;
    if (*p >= '0' && *p <= '9') {
      while (*p >= '0' && *p <= '9') p++;
      if (p[0] == ':' && p[1] == ' ') return 1;
    }
  }
  return 0;
}

/* An error raised by a C function (luaL_error in the binding, a bad argument)
 * carries no position: name the Lua code that called it, the first frame with
 * a line outside the library's own files, as the binding's engine errors do. */
extern char moe_l_lib_dir[];
static const char *with_caller_position(lua_State *L, const char *msg) {
  if (has_position(msg)) return msg;
  lua_Debug ar;
  size_t nlib = strlen(moe_l_lib_dir);
  for (int level = 1; lua_getstack(L, level, &ar); level++) {
    if (!lua_getinfo(L, "Sl", &ar)) break;
    if (ar.currentline <= 0) continue;
    if (ar.source[0] == '@' && nlib && !strncmp(ar.source + 1, moe_l_lib_dir, nlib)) continue;
    return lua_pushfstring(L, "%s:%d: %s", ar.short_src, ar.currentline, msg);
  }
  return msg;
}

static int msghandler(lua_State *L) {
  lua_sethook(L, NULL, 0, 0); /* a pending Ctrl-C must not interrupt the handler itself */
  moe_lua_interrupted = 0;
  if (lua_isnil(L, 1)) return 1; /* error() with no value: a silent non-zero exit (busted uses it) */
  const char *msg = lua_tostring(L, 1);
  if (!msg) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) return 1;
    msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  msg = with_caller_position(L, msg);
  lua_getglobal(L, "debug");
  lua_getfield(L, -1, "traceback");
  lua_pushstring(L, msg);
  lua_pushinteger(L, 2);
  lua_call(L, 2, 1);
  return 1;
}

/* call the function below nargs args with a traceback handler and SIGINT armed */
static int docall(lua_State *L, int nargs, int nres) {
  int base = lua_gettop(L) - nargs;
  lua_pushcfunction(L, msghandler);
  lua_insert(L, base);
  moe_lua_interrupted = 0;
  moe_lua_defer = moe_lua_deferred = 0;
  set_sigint(on_sigint);
  int status = lua_pcall(L, nargs, nres, base);
  set_sigint(SIG_DFL);
  lua_sethook(L, NULL, 0, 0);
  moe_lua_interrupted = 0;
  lua_remove(L, base);
  if (status) lua_gc(L, LUA_GCCOLLECT, 0);
  return status;
}

static int report(lua_State *L, int status) {
  if (status && !lua_isnil(L, -1)) {
    const char *msg = lua_tostring(L, -1);
    if (moe_dist_is_initialized() && moe_dist_world_size() > 1) /* under mpirun: which rank says it */
      fprintf(stderr, "%s: rank %d: %s\n", progname, moe_dist_rank(), msg ? msg : "(error object is not a string)");
    else fprintf(stderr, "%s: %s\n", progname, msg ? msg : "(error object is not a string)");
    fflush(stderr);
    lua_pop(L, 1);
  }
  return status;
}

static int dostring(lua_State *L, const char *code, const char *name) {
  int status = luaL_loadbuffer(L, code, strlen(code), name);
  if (!status) status = docall(L, 0, 0);
  return report(L, status);
}

/* moe as a global, and help(x) (moe.help, unless the code has a help of its own) */
static int load_moe_global(lua_State *L) {
  lua_getglobal(L, "require");
  lua_pushstring(L, "moe");
  int status = docall(L, 1, 1);
  if (status) return report(L, status);
  lua_setglobal(L, "moe");
  return dostring(L, "if help == nil then help = moe.help end", "=(moelua)");
}

/* ---------------------------------------------------------------- REPL */

static char history_path[PATH_MAX];

static char *complete_gen(const char *text, int state) {
  static int idx, count;
  lua_State *L = gL;
  if (state == 0) {
    lua_settop(L, 0);
    lua_getglobal(L, "require");
    lua_pushstring(L, "moe.repl");
    if (lua_pcall(L, 1, 1, 0)) {
      lua_settop(L, 0);
      return NULL;
    }
    lua_getfield(L, -1, "complete");
    lua_pushstring(L, text);
    if (lua_pcall(L, 1, 1, 0) || !lua_istable(L, -1)) {
      lua_settop(L, 0);
      return NULL;
    }
    lua_replace(L, 1);
    lua_settop(L, 1);
    idx = 0;
    count = (int)lua_objlen(L, 1);
  }
  while (idx < count) {
    lua_rawgeti(L, 1, ++idx);
    const char *s = lua_tostring(L, -1);
    char *r = s ? strdup(s) : NULL;
    lua_pop(L, 1);
    if (r) return r;
  }
  lua_settop(L, 0);
  return NULL;
}

static char **complete(const char *text, int start, int end) {
  (void)start;
  (void)end;
  rl_attempted_completion_over = 1; /* never fall back to file names */
  return rl_completion_matches(text, complete_gen);
}

static int repl_getc(FILE *f) {
  unsigned char c;
  for (;;) {
    ssize_t n = read(fileno(f), &c, 1);
    if (n == 1) return c;
    if (n < 0 && errno == EINTR) {
      if (input_cancelled) return '\n'; /* Ctrl-C: end the line; the loop discards it */
      continue;
    }
    return EOF;
  }
}

/* one line of input, without the trailing newline; NULL at end of input */
static char *read_line(int tty, const char *prompt) {
  if (tty) {
    in_readline = 1;
    input_cancelled = 0;
    set_sigint(on_sigint);
    char *line = readline(prompt);
    in_readline = 0;
    set_sigint(SIG_DFL);
    return line;
  }
  size_t cap = 256, len = 0;
  char *buf = malloc(cap);
  int c;
  while ((c = getchar()) != EOF && c != '\n') {
    if (len + 1 >= cap) buf = realloc(buf, cap *= 2);
    buf[len++] = (char)c;
  }
  if (c == EOF && len == 0) {
    free(buf);
    return NULL;
  }
  buf[len] = 0;
  return buf;
}

/* REPL chunks run with the JIT off (library code keeps it): the interpreter
 * checks hooks, so Ctrl-C stops even a pure-Lua loop typed at the prompt. */
static void jit_off(lua_State *L) {
  lua_getglobal(L, "jit");
  if (lua_istable(L, -1)) {
    lua_getfield(L, -1, "off");
    lua_pushvalue(L, -3);
    lua_pushboolean(L, 1);
    if (lua_pcall(L, 2, 0, 0)) lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

/* does the syntax error on the stack say the input ended too early? */
static int at_eof(lua_State *L, int status) {
  size_t ml;
  const char *msg = lua_tolstring(L, -1, &ml);
  return status == LUA_ERRSYNTAX && msg && ml >= 7 && !strcmp(msg + ml - 7, "'<eof>'");
}

/* Compile the chunk: "return <chunk>" first so expressions print, then the chunk.
 * An expression runs as the argument of a pass-through call, not as the tail
 * call "return f(x)" would make of it, so the REPL's own frame stays on the
 * stack and an error in f names stdin:1.
 * Returns 0 compiled (function on stack), 1 incomplete, 2 syntax error (message on stack). */
static int compile_chunk(lua_State *L, const char *chunk) {
  static const char pre[] = "return (function(...) return ... end)(", post[] = "\n)";
  size_t n = strlen(chunk);
  char *ret = malloc(n + sizeof pre + sizeof post);
  memcpy(ret, "return ", 7);
  memcpy(ret + 7, chunk, n + 1);
  int status = luaL_loadbuffer(L, ret, n + 7, "=stdin");
  if (status == 0) { /* an expression list: the wrapped form, where it compiles too ("x;" does not) */
    memcpy(ret, pre, sizeof pre - 1);
    memcpy(ret + sizeof pre - 1, chunk, n);
    memcpy(ret + sizeof pre - 1 + n, post, sizeof post);
    if (luaL_loadbuffer(L, ret, strlen(ret), "=stdin") == 0) lua_remove(L, -2);
    else lua_pop(L, 1);
  }
  free(ret);
  if (status == 0) {
    jit_off(L);
    return 0;
  }
  int ret_eof = at_eof(L, status);
  lua_pop(L, 1);
  status = luaL_loadbuffer(L, chunk, n, "=stdin");
  if (status == 0) {
    jit_off(L);
    return 0;
  }
  if (ret_eof || at_eof(L, status)) {
    lua_pop(L, 1);
    return 1;
  }
  return 2;
}

static void print_results(lua_State *L, int n) {
  if (n == 0) return;
  lua_getglobal(L, "require");
  lua_pushstring(L, "moe.repl");
  if (lua_pcall(L, 1, 1, 0) == 0) {
    lua_getfield(L, -1, "show");
    lua_remove(L, -2);
    lua_insert(L, -(n + 1));
    if (docall(L, n, 0)) report(L, 1);
  } else {
    lua_pop(L, 1 + n);
  }
}

static int repl(lua_State *L) {
  int tty = isatty(0) && isatty(1), errors = 0;
  if (tty) {
    const char *home = getenv("HOME"), *hp = getenv("MOELUA_HISTORY");
    if (hp) snprintf(history_path, sizeof history_path, "%s", hp);
    else snprintf(history_path, sizeof history_path, "%s/.moelua_history", home ? home : ".");
    rl_readline_name = "moelua";
    rl_catch_signals = 0;
    rl_getc_function = repl_getc;
    rl_attempted_completion_function = complete;
    rl_completion_append_character = '\0';
    rl_basic_word_break_characters = " \t\n\"'`@$><=;|&{(,+-*/%^#~";
    using_history();
    stifle_history(2000);
    read_history(history_path);
    printf("moelua %s (%s) -- tensors and MoE layers for LuaJIT. Ctrl-D exits.\n", MOE_VERSION, LUAJIT_VERSION);
    print_blas_line(stdout);
  }
  char *chunk = NULL;
  for (;;) {
    char *line = read_line(tty, chunk ? ">> " : "> ");
    if (!line) break;
    if (tty && input_cancelled) { /* Ctrl-C at the prompt: drop the pending input */
      free(line);
      free(chunk);
      chunk = NULL;
      input_cancelled = 0;
      printf("^C\n");
      continue;
    }
    if (!chunk) chunk = line;
    else {
      size_t a = strlen(chunk), b = strlen(line);
      chunk = realloc(chunk, a + b + 2);
      chunk[a] = '\n';
      memcpy(chunk + a + 1, line, b + 1);
      free(line);
    }
    if (chunk[strspn(chunk, " \t")] == 0) {
      free(chunk);
      chunk = NULL;
      continue;
    }
    lua_settop(L, 0);
    int c = compile_chunk(L, chunk);
    if (c == 1) continue; /* incomplete: read another line */
    if (tty) {
      add_history(chunk);
      write_history(history_path);
    }
    free(chunk);
    chunk = NULL;
    if (c == 2) {
      report(L, 1);
      errors++;
      continue;
    }
    int status = docall(L, 0, LUA_MULTRET);
    if (status) {
      report(L, status);
      errors++;
      continue;
    }
    print_results(L, lua_gettop(L));
    fflush(stdout);
  }
  if (chunk) { /* input ended inside an unfinished statement */
    lua_settop(L, 0);
    compile_chunk(L, chunk);
    report(L, 1);
    errors++;
    free(chunk);
  }
  if (tty) printf("\n");
  return !tty && errors ? 1 : 0;
}

/* ---------------------------------------------------------------- scripts */

/* arg[-k..-1] = interpreter and options, arg[0] = script, arg[1..] = its arguments
 * (with no script, arg[0] is the interpreter) */
static void set_arg(lua_State *L, int argc, char **argv, int script_at) {
  lua_createtable(L, argc - script_at, script_at + 1);
  for (int i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - script_at);
  }
  lua_setglobal(L, "arg");
}

/* index of the script argument, or 0: the first non-option after the options */
static int find_script(int argc, char **argv) {
  if (argc > 2 && !strcmp(argv[1], "run")) return 2;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "-e")) {
      i++;
      continue;
    }
    if (!strcmp(argv[i], "--")) return i + 1 < argc ? i + 1 : 0;
    if (argv[i][0] != '-' || !argv[i][1]) return (i == 1 && !strcmp(argv[i], "repl")) ? 0 : i;
  }
  return 0;
}

static int run_script(lua_State *L, int argc, char **argv, int script_at) {
  const char *fname = argv[script_at];
  int status = luaL_loadfile(L, strcmp(fname, "-") ? fname : NULL);
  if (status == 0) {
    int nargs = argc - script_at - 1;
    luaL_checkstack(L, nargs + 2, "too many arguments");
    for (int i = script_at + 1; i < argc; i++) lua_pushstring(L, argv[i]);
    status = docall(L, nargs, 0);
  }
  return report(L, status);
}

static void usage(FILE *f) {
  fprintf(f,
          "usage: moelua [options] [script.lua [args...]]\n"
          "       moelua run script.lua [args...]\n"
          "       moelua repl\n"
          "       moelua doc NAME...   the documentation of NAME (nn.Dense, randn, nn.Module:fit; --help)\n"
          "Options:\n"
          "  -e code     run code (moe is preloaded as a global); may be repeated\n"
          "  -i          enter the REPL after running the script or -e code\n"
          "  -v, --version  print the version\n"
          "  -h, --help     print this help\n"
          "  -           run the script read from standard input\n"
          "Environment: MOELUA_ROOT (a checkout or install prefix, used when the library is not\n"
          "  where this binary was built for it), MOELUA_HISTORY (REPL history file)\n");
}

/* moelua doc NAME...: moe.doc.main(args) prints the entries; its result is the exit status */
static int doc_main(lua_State *L, int argc, char **argv) {
  if (load_moe_global(L)) return 1;
  lua_getglobal(L, "require");
  lua_pushstring(L, "moe.doc");
  if (docall(L, 1, 1)) return report(L, 1);
  lua_getfield(L, -1, "main");
  lua_createtable(L, argc - 2, 0);
  for (int i = 2; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - 1);
  }
  if (docall(L, 1, 1)) return report(L, 1);
  int rc = lua_isnumber(L, -1) ? (int)lua_tointeger(L, -1) : 1;
  fflush(stdout);
  return rc;
}

static int gc64_ok(lua_State *L) {
  if (luaL_dostring(L, "local ok, ffi = pcall(require, 'ffi') return ok and ffi.abi('gc64')")) return 0;
  int ok = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return ok;
}

int main(int argc, char **argv) {
  choose_blas_kernels(argv);
  lua_State *L = luaL_newstate();
  if (!L) {
    fprintf(stderr, "moelua: cannot create the Lua state (out of memory)\n");
    return 1;
  }
  gL = L;
  progname = strrchr(argv[0], '/') ? strrchr(argv[0], '/') + 1 : argv[0];
  luaL_openlibs(L);
  if (!gc64_ok(L)) {
    fprintf(stderr,
            "moelua: the LuaJIT library is not a GC64 build. moelua needs LuaJIT 2.1 built with\n"
            "LUAJIT_ENABLE_GC64 (Debian's luajit package on amd64 is one): install it and rebuild.\n");
    return 1;
  }
  moe_lua_setup_paths_at(L, MOELUA_LUADIR);
  /* under mpirun every rank joins the world first (moe.distributed): its errors then end the job */
  if (moe_dist_launched() && moe_dist_init())
    fprintf(stderr, "%s: warning: moe.distributed.%s\n", progname, moe_last_error());
  if (argc > 1 && !strcmp(argv[1], "doc")) {
    set_arg(L, argc, argv, 0);
    int rc = doc_main(L, argc, argv);
    lua_close(L);
    return rc;
  }
  /* `arg` must exist before any -e code runs, so the script position is found first */
  int script_at = find_script(argc, argv);
  set_arg(L, argc, argv, script_at);

  int status = 0, interactive = 0, ran = 0;
  int i = 1;
  if (argc > 1 && !strcmp(argv[1], "run")) {
    if (argc < 3) {
      fprintf(stderr, "moelua run: missing script name\n");
      usage(stderr);
      return 1;
    }
    i = 2;
  } else if (argc > 1 && !strcmp(argv[1], "repl")) {
    i = 2;
    interactive = 1;
  }
  int end = script_at ? script_at : argc; /* options are what comes before the script */
  for (; i < end; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
      usage(stdout);
      lua_close(L);
      return 0;
    }
    if (!strcmp(a, "-v") || !strcmp(a, "--version")) {
      printf("moelua %s (%s, GC64)\n", MOE_VERSION, LUAJIT_VERSION);
      moe_blas_status st;
      moe_blas_status_get(&st);
      char feats[200];
      moe_cpu_features_str(st.cpu.features, feats, sizeof feats);
      printf("BLAS: %s\nkernels: %s (%s)\nCPU: %s; best kernel set: %s\n", st.library, st.kernels, st.reason,
             feats[0] ? feats : "no AVX", st.cpu_best);
      char desc[1200];
      moe_sgemm_describe(desc, sizeof desc, 0);
      printf("sgemm: %s\n", desc);
      printf("Lua library: %s\n",
             *moe_lua_library_dir() ? moe_lua_library_dir() : "not found (see moelua -e 'require \"moe\"')");
      lua_close(L);
      return 0;
    }
    if (!strcmp(a, "-i")) {
      interactive = 1;
      continue;
    }
    if (!strcmp(a, "-e")) {
      if (++i >= argc) {
        fprintf(stderr, "moelua: -e needs an argument\n");
        return 1;
      }
      if (!ran && load_moe_global(L)) {
        lua_close(L);
        return 1;
      }
      ran = 1;
      if ((status = dostring(L, argv[i], "=(command line)"))) break;
      continue;
    }
    if (!strcmp(a, "--")) break;
    fprintf(stderr, "moelua: unknown option '%s'\n", a);
    usage(stderr);
    return 1;
  }
  if (!status && script_at) {
    status = run_script(L, argc, argv, script_at);
    ran = 1;
  }
  if (!status && (interactive || !ran)) {
    lua_getglobal(L, "moe"); /* -e already loaded it; a script may have set its own */
    int have = !lua_isnil(L, -1);
    lua_pop(L, 1);
    if (!have && load_moe_global(L)) {
      lua_close(L);
      return 1;
    }
    status = repl(L);
  }
  /* a failed rank ends every rank now, before lua_close could wait on one of them */
  if (status && moe_dist_is_initialized() && moe_dist_world_size() > 1) moe_dist_abort(1);
  lua_close(L);
  return status ? 1 : 0;
}
