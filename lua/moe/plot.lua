-- moe.plot: charts as SVG or PNG files (by the file's extension), drawn with
-- cairo (Debian's libcairo2, through LuaJIT's FFI).
--
--   moe.plot.history(history, "curves.svg")              -- loss and each metric, train vs val
--   moe.plot.expert_utilisation(gates, "experts.png", { task_names = {...} })
--   moe.plot.bars({ 120, 80, ... }, "tokens.svg", { title = "tokens per expert" })
--   moe.plot.lines({ { name = "MMoE", x = {...}, y = {...} }, ... }, "corr.svg",
--                  { xlabel = "correlation", ylabel = "test loss" })
--
-- Every function writes the file atomically (a temporary file renamed over the
-- target) and returns its path.
local moe = require "moe"
local error = moe._error -- every error is raised at the user's line (init.lua)
local ffi = require "ffi"

local plot = {}

ffi.cdef [[
typedef struct _cairo cairo_t;
typedef struct _cairo_surface cairo_surface_t;
cairo_surface_t *cairo_image_surface_create(int format, int width, int height);
cairo_surface_t *cairo_svg_surface_create(const char *filename, double width, double height);
int cairo_surface_write_to_png(cairo_surface_t *surface, const char *filename);
int cairo_surface_status(cairo_surface_t *surface);
void cairo_surface_finish(cairo_surface_t *surface);
void cairo_surface_destroy(cairo_surface_t *surface);
cairo_t *cairo_create(cairo_surface_t *target);
int cairo_status(cairo_t *cr);
void cairo_destroy(cairo_t *cr);
void cairo_set_source_rgb(cairo_t *cr, double red, double green, double blue);
void cairo_set_line_width(cairo_t *cr, double width);
void cairo_move_to(cairo_t *cr, double x, double y);
void cairo_line_to(cairo_t *cr, double x, double y);
void cairo_rectangle(cairo_t *cr, double x, double y, double width, double height);
void cairo_arc(cairo_t *cr, double xc, double yc, double radius, double angle1, double angle2);
void cairo_stroke(cairo_t *cr);
void cairo_fill(cairo_t *cr);
void cairo_paint(cairo_t *cr);
void cairo_new_path(cairo_t *cr);
void cairo_select_font_face(cairo_t *cr, const char *family, int slant, int weight);
void cairo_set_font_size(cairo_t *cr, double size);
void cairo_show_text(cairo_t *cr, const char *utf8);
void cairo_save(cairo_t *cr);
void cairo_restore(cairo_t *cr);
void cairo_rotate(cairo_t *cr, double angle);
void cairo_translate(cairo_t *cr, double tx, double ty);
typedef struct { double x_bearing, y_bearing, width, height, x_advance, y_advance; } cairo_text_extents_t;
void cairo_text_extents(cairo_t *cr, const char *utf8, cairo_text_extents_t *extents);
const char *cairo_status_to_string(int status);
void cairo_debug_reset_static_data(void);
void FcFini(void);
void *dlopen(const char *filename, int flags);
]]

local C
local function lib()
  if C then return C end
  local ok, l = pcall(ffi.load, "cairo")
  if not ok then ok, l = pcall(ffi.load, "libcairo.so.2") end
  if not ok then error("moe.plot: libcairo2 is not installed (scripts/deps.sh installs it)", 3) end
  C = l
  -- pinned (never unloaded), so that a leak checker at exit can still name them
  pcall(function() ffi.C.dlopen("libcairo.so.2", 2) end)
  -- at exit (the Lua state closing), give back cairo's and fontconfig's caches,
  -- so that leak checkers see nothing of them
  local sentinel = newproxy(true)
  getmetatable(sentinel).__gc = function()
    pcall(function() l.cairo_debug_reset_static_data() end)
    pcall(function() ffi.load("libfontconfig.so.1").FcFini() end)
  end
  plot._sentinel = sentinel
  return C
end

local PALETTE = { { 0.12, 0.47, 0.71 }, { 1.0, 0.5, 0.05 }, { 0.17, 0.63, 0.17 }, { 0.84, 0.15, 0.16 },
  { 0.58, 0.4, 0.74 }, { 0.55, 0.34, 0.29 }, { 0.89, 0.47, 0.76 }, { 0.5, 0.5, 0.5 }, { 0.74, 0.74, 0.13 },
  { 0.09, 0.75, 0.81 } }
local function color(i) return PALETTE[(i - 1) % #PALETTE + 1] end

-- a canvas for the path's format; finish() writes the file atomically
local function canvas(path, w, h)
  local cl = lib()
  if type(path) ~= "string" then error(("moe.plot: the output path must be a string, got %s"):format(moe._show(path)), 3) end
  local ext = path:lower():match("%.(%w+)$")
  if ext ~= "svg" and ext ~= "png" then
    error(("moe.plot: %s: the file name must end in .svg or .png"):format(path), 3)
  end
  local tmp = path .. ".tmp-" .. tostring(os.time()) .. "." .. ext
  local surface = ext == "svg" and cl.cairo_svg_surface_create(tmp, w, h) or cl.cairo_image_surface_create(0, w, h)
  local cr = cl.cairo_create(surface)
  cl.cairo_set_source_rgb(cr, 1, 1, 1)
  cl.cairo_paint(cr)
  cl.cairo_select_font_face(cr, "sans-serif", 0, 0)
  local cv = { cr = cr, w = w, h = h }
  function cv.finish()
    local status = cl.cairo_status(cr)
    cl.cairo_destroy(cr)
    if ext == "png" and status == 0 then status = cl.cairo_surface_write_to_png(surface, tmp) end
    cl.cairo_surface_finish(surface)
    if status == 0 then status = cl.cairo_surface_status(surface) end
    cl.cairo_surface_destroy(surface)
    if status ~= 0 then
      os.remove(tmp)
      error(("moe.plot: cannot write %s: %s"):format(path, ffi.string(cl.cairo_status_to_string(status))), 3)
    end
    local ok, err = os.rename(tmp, path)
    if not ok then os.remove(tmp); error(("moe.plot: cannot write %s: %s"):format(path, tostring(err)), 3) end
    return path
  end
  return cv
end

local function text(cv, s, x, y, opts)
  opts = opts or {}
  local cl, cr = C, cv.cr
  cl.cairo_set_font_size(cr, opts.size or 11)
  local ext = ffi.new("cairo_text_extents_t")
  cl.cairo_text_extents(cr, s, ext)
  local dx = opts.align == "center" and -ext.width / 2 or opts.align == "right" and -ext.width or 0
  local dy = opts.valign == "middle" and ext.height / 2 or 0
  local c = opts.color or { 0.15, 0.15, 0.15 }
  cl.cairo_set_source_rgb(cr, c[1], c[2], c[3])
  cl.cairo_save(cr)
  cl.cairo_translate(cr, x, y)
  if opts.rotate then cl.cairo_rotate(cr, opts.rotate) end
  cl.cairo_move_to(cr, dx, dy)
  cl.cairo_show_text(cr, s)
  cl.cairo_restore(cr)
  return ext.width
end

-- about n "nice" ticks covering [lo, hi]
local function ticks(lo, hi, n)
  if hi - lo < 1e-12 then lo, hi = lo - 0.5, hi + 0.5 end
  local raw = (hi - lo) / (n or 5)
  local mag = 10 ^ math.floor(math.log10(raw))
  local step = mag
  for _, m in ipairs { 1, 2, 2.5, 5, 10 } do
    if m * mag >= raw then step = m * mag; break end
  end
  local t0 = math.floor(lo / step) * step
  local out = {}
  for v = t0, hi + step * 0.5, step do out[#out + 1] = v end
  return out, step
end

local function fmt_tick(v, step)
  if step >= 1 and math.abs(v - math.floor(v + 0.5)) < 1e-9 then return ("%d"):format(math.floor(v + 0.5)) end
  local d = math.max(0, -math.floor(math.log10(step)) + 1)
  return ("%." .. d .. "f"):format(v)
end

-- one panel: axes with ticks in the rectangle (x0, y0, w, h); returns data->pixel maps
local function axes(cv, box, xr, yr, opts)
  local cl, cr = C, cv.cr
  local x0, y0, w, h = box[1], box[2], box[3], box[4]
  local xt, xs = ticks(xr[1], xr[2], opts.xticks or 6)
  local yt, ys = ticks(yr[1], yr[2], 5)
  local xlo, xhi = math.min(xr[1], xt[1]), math.max(xr[2], xt[#xt])
  local ylo, yhi = math.min(yr[1], yt[1]), math.max(yr[2], yt[#yt])
  local function X(v) return x0 + (v - xlo) / (xhi - xlo) * w end
  local function Y(v) return y0 + h - (v - ylo) / (yhi - ylo) * h end
  cl.cairo_set_line_width(cr, 1)
  for _, v in ipairs(yt) do -- grid
    cl.cairo_set_source_rgb(cr, 0.9, 0.9, 0.9)
    cl.cairo_move_to(cr, x0, Y(v)); cl.cairo_line_to(cr, x0 + w, Y(v)); cl.cairo_stroke(cr)
    text(cv, fmt_tick(v, ys), x0 - 6, Y(v), { align = "right", valign = "middle", size = 10 })
  end
  if not opts.categories then
    for _, v in ipairs(xt) do text(cv, fmt_tick(v, xs), X(v), y0 + h + 14, { align = "center", size = 10 }) end
  end
  cl.cairo_set_source_rgb(cr, 0.3, 0.3, 0.3)
  cl.cairo_rectangle(cr, x0, y0, w, h)
  cl.cairo_stroke(cr)
  if opts.title then text(cv, opts.title, x0 + w / 2, y0 - 8, { align = "center", size = 12 }) end
  if opts.xlabel then text(cv, opts.xlabel, x0 + w / 2, y0 + h + 30, { align = "center" }) end
  if opts.ylabel then text(cv, opts.ylabel, x0 - 44, y0 + h / 2, { align = "center", rotate = -math.pi / 2 }) end
  return X, Y
end

local function legend(cv, names, x, y)
  local cl, cr = C, cv.cr
  for i, name in ipairs(names) do
    local c = color(i)
    cl.cairo_set_source_rgb(cr, c[1], c[2], c[3])
    cl.cairo_rectangle(cr, x, y + (i - 1) * 16 - 8, 12, 8)
    cl.cairo_fill(cr)
    text(cv, name, x + 16, y + (i - 1) * 16, { size = 10 })
  end
end

local function range(lists)
  local lo, hi = math.huge, -math.huge
  for _, l in ipairs(lists) do
    for _, v in ipairs(l) do
      if v == v and v ~= math.huge and v ~= -math.huge then lo, hi = math.min(lo, v), math.max(hi, v) end
    end
  end
  if lo > hi then lo, hi = 0, 1 end
  return { lo, hi }
end

local function check_series(series, where)
  if type(series) ~= "table" or #series == 0 then error(("%s: expected a list of series {name=, x=, y=}, got %s"):format(where, moe._show(series)), 3) end
  for i, s in ipairs(series) do
    if type(s.y) ~= "table" or #s.y == 0 then error(("%s: series %d has no y values"):format(where, i), 3) end
    if s.x and #s.x ~= #s.y then error(("%s: series %d has %d x values and %d y values"):format(where, i, #s.x, #s.y), 3) end
  end
end

local function draw_lines(cv, box, series, opts)
  local xs, ys = {}, {}
  for i, s in ipairs(series) do
    if not s.x then s.x = {}; for j = 1, #s.y do s.x[j] = j end end
    xs[i], ys[i] = s.x, s.y
  end
  local X, Y = axes(cv, box, range(xs), opts.ylim or range(ys), opts)
  local cl, cr = C, cv.cr
  cl.cairo_set_line_width(cr, 2)
  for i, s in ipairs(series) do
    local c = color(i)
    cl.cairo_set_source_rgb(cr, c[1], c[2], c[3])
    cl.cairo_new_path(cr)
    local started = false
    for j = 1, #s.y do
      local v = s.y[j]
      if v == v then
        if started then cl.cairo_line_to(cr, X(s.x[j]), Y(v)) else cl.cairo_move_to(cr, X(s.x[j]), Y(v)); started = true end
      end
    end
    cl.cairo_stroke(cr)
    for j = 1, #s.y do
      if s.y[j] == s.y[j] then cl.cairo_arc(cr, X(s.x[j]), Y(s.y[j]), 2.5, 0, 2 * math.pi); cl.cairo_fill(cr) end
    end
  end
  local names = {}
  for i, s in ipairs(series) do names[i] = s.name or ("series " .. i) end
  legend(cv, names, box[1] + box[3] + 12, box[2] + 10)
end

-- lines(series, path, {title, xlabel, ylabel, width, height}): a line chart
function plot.lines(series, path, opts)
  check_series(series, "plot.lines")
  opts = opts or {}
  local w, h = opts.width or 720, opts.height or 420
  local cv = canvas(path, w, h)
  draw_lines(cv, { 70, 40, w - 70 - 160, h - 40 - 60 }, series, opts)
  return cv.finish()
end

-- history(history, path, {metrics = names, title}): one panel per quantity
-- (loss, then each metric), training and validation curves against the epoch
function plot.history(history, path, opts)
  opts = opts or {}
  if type(history) ~= "table" or type(history.history) ~= "table" then
    error(("plot.history: expected the History that fit returns, got %s"):format(moe._show(history)), 2)
  end
  local names = opts.metrics
  if not names then
    names = {}
    for k in pairs(history.history) do if not k:match("^val_") then names[#names + 1] = k end end
    table.sort(names, function(a, b) if a == "loss" then return true elseif b == "loss" then return false end return a < b end)
  end
  if #names == 0 then error("plot.history: the history has no epochs", 2) end
  -- one value per epoch: a quantity missing from some epochs' logs (a layer
  -- metric reported in some epochs only, a stop mid-epoch) is a gap (NaN)
  local ne = #(history.epoch or {})
  local function per_epoch(vals)
    if type(vals) ~= "table" then return nil end
    local out, any = {}, false
    for j = 1, ne do
      local v = vals[j]
      if type(v) == "number" then out[j] = v; any = true else out[j] = 0 / 0 end
    end
    return any and out or nil
  end
  local panels = {}
  for i, name in ipairs(names) do
    local train = per_epoch(history.history[name])
    if not train then error(("plot.history: no values for '%s'"):format(tostring(name)), 2) end
    panels[i] = { { name = "train", x = history.epoch, y = train } }
    local val = per_epoch(history.history["val_" .. name])
    if val then panels[i][2] = { name = "validation", x = history.epoch, y = val } end
  end
  local cols = math.min(#names, 3)
  local rows = math.ceil(#names / cols)
  local pw, ph = 360, 260
  local cv = canvas(path, cols * pw, rows * ph + 30)
  if opts.title then text(cv, opts.title, cols * pw / 2, 20, { align = "center", size = 14 }) end
  for i, name in ipairs(names) do
    local col, row = (i - 1) % cols, math.floor((i - 1) / cols)
    local series = panels[i]
    draw_lines(cv, { col * pw + 60, row * ph + 60, pw - 60 - 90, ph - 60 - 50 }, series,
      { title = name, xlabel = "epoch", xticks = 5 })
  end
  return cv.finish()
end

-- bars(values or {name = {values}}, path, {labels, title, xlabel, ylabel, group_names}):
-- one bar per value, or groups of bars (one color per series)
function plot.bars(values, path, opts)
  opts = opts or {}
  local groups
  if type(values) ~= "table" or next(values) == nil then error(("plot.bars: expected a list of numbers or of lists, got %s"):format(moe._show(values)), 2) end
  if type(values[1]) == "number" then groups = { values } else groups = values end
  local n = #groups[1]
  for g, v in ipairs(groups) do
    if #v ~= n then error(("plot.bars: series %d has %d values, series 1 has %d"):format(g, #v, n), 2) end
  end
  local w, h = opts.width or math.max(480, 60 * n + 240), opts.height or 400
  local cv = canvas(path, w, h)
  local lo = math.min(0, range(groups)[1])
  local box = { 70, 40, w - 70 - 160, h - 40 - 60 }
  opts.categories = true
  local _, Y = axes(cv, box, { 0.5, n + 0.5 }, { lo, range(groups)[2] }, opts)
  local cl, cr = C, cv.cr
  local slot = box[3] / n
  local bw = slot * 0.8 / #groups
  for g, v in ipairs(groups) do
    local c = color(g)
    cl.cairo_set_source_rgb(cr, c[1], c[2], c[3])
    for i = 1, n do
      local x = box[1] + (i - 1) * slot + slot * 0.1 + (g - 1) * bw
      local y0, y1 = Y(0), Y(v[i])
      cl.cairo_rectangle(cr, x, math.min(y0, y1), bw, math.abs(y1 - y0))
      cl.cairo_fill(cr)
    end
  end
  for i = 1, n do
    local label = opts.labels and opts.labels[i] or tostring(i)
    text(cv, label, box[1] + (i - 0.5) * slot, box[2] + box[4] + 14, { align = "center", size = 10 })
  end
  if #groups > 1 or opts.group_names then
    local names = {}
    for g = 1, #groups do names[g] = opts.group_names and opts.group_names[g] or ("series " .. g) end
    legend(cv, names, box[1] + box[3] + 12, box[2] + 10)
  end
  return cv.finish()
end

-- expert_utilisation(gates, path, {task_names, title}): the mean gate weight of
-- each expert for each task; gates: a list of [B, E] tensors (one per task or
-- gate, as MMoE:gate_weights gives) or of lists of E numbers
function plot.expert_utilisation(gates, path, opts)
  opts = opts or {}
  if type(gates) ~= "table" or #gates == 0 then error(("plot.expert_utilisation: expected a list of [B, E] gate tensors, got %s"):format(moe._show(gates)), 2) end
  local core = require("moe").core
  local series, names = {}, {}
  for t, g in ipairs(gates) do
    if core.is_tensor(g) then
      if g:dim() ~= 2 then error(("plot.expert_utilisation: gates %d must be [B, E], got [%s]"):format(t, table.concat(g:shape(), ",")), 2) end
      series[t] = g:to("float64"):mean(1):totable()
    else
      series[t] = g
    end
    names[t] = opts.task_names and opts.task_names[t] or ("task " .. t)
  end
  local labels = {}
  for e = 1, #series[1] do labels[e] = "E" .. e end
  return plot.bars(series, path, { labels = labels, group_names = names, title = opts.title or "mean gate weight per expert",
    xlabel = "expert", ylabel = "mean gate weight" })
end

-- tokens_per_expert(counts, path, {title}): a sparse layer's routing (last_plan.counts
-- or the expert_<e>_tokens metrics) as bars
function plot.tokens_per_expert(counts, path, opts)
  opts = opts or {}
  local core = require("moe").core
  if core.is_tensor(counts) then counts = counts:to("float64"):totable() end
  local labels = {}
  for e = 1, #counts do labels[e] = "E" .. e end
  return plot.bars(counts, path, { labels = labels, title = opts.title or "tokens per expert", xlabel = "expert",
    ylabel = "tokens" })
end

return plot
