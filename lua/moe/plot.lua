-- moe.plot: charts as SVG or PNG files (by the file's extension), drawn with
-- cairo (Debian's libcairo2, through LuaJIT's FFI).
--
--   moe.plot.history(history, "curves.svg")              -- loss and each metric, train vs val
--   moe.plot.expert_utilisation(gates, "experts.png", { task_names = {...} })  -- tasks x experts
--   moe.plot.expert_load(history, "load.svg")            -- a sparse layer's experts x epochs
--   moe.plot.heatmap({ { 1, 2 }, { 3, 4 } }, "m.svg", { row_labels = {...}, col_labels = {...} })
--   moe.plot.bars({ 120, 80, ... }, "tokens.svg", { title = "tokens per expert" })
--   moe.plot.lines({ { name = "MMoE", x = {...}, y = {...}, err = {...} }, ... }, "corr.svg",
--                  { xlabel = "correlation", ylabel = "test loss" })  -- err: mean +- sd bands
--
-- Every function writes the file atomically (a temporary file renamed over the
-- target) and returns its path, then a description of what it drew (the
-- figure: every text in drawing order, each panel's tick labels, line
-- segments, bands, error bars and heatmap cells, in pixels), which the specs
-- hold against the file. A NaN, infinite or missing value is a gap: lines stop
-- there and start again after it.
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
void cairo_set_source_rgba(cairo_t *cr, double red, double green, double blue, double alpha);
void cairo_close_path(cairo_t *cr);
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
  if not ok then error(require("moe")._where("moe.plot: libcairo2 is not installed (scripts/deps.sh installs it)"), 0) end
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
  if type(path) ~= "string" then
    error(require("moe")._where(("moe.plot: the output path must be a file name (a string), got %s"):format(
      type(path) == "nil" and "nil" or ("%s (a %s)"):format(tostring(path), type(path)))), 0)
  end
  local ext = path:lower():match("%.(%w+)$")
  if ext ~= "svg" and ext ~= "png" then
    error(require("moe")._where(("moe.plot: %s: the file name must end in .svg or .png"):format(path)), 0)
  end
  local tmp = path .. ".tmp-" .. tostring(os.time()) .. "." .. ext
  local surface = ext == "svg" and cl.cairo_svg_surface_create(tmp, w, h) or cl.cairo_image_surface_create(0, w, h)
  local cr = cl.cairo_create(surface)
  cl.cairo_set_source_rgb(cr, 1, 1, 1)
  cl.cairo_paint(cr)
  cl.cairo_select_font_face(cr, "sans-serif", 0, 0)
  local cv = { cr = cr, w = w, h = h, fig = { width = w, height = h, texts = {}, panels = {} } }
  function cv.finish()
    local status = cl.cairo_status(cr)
    cl.cairo_destroy(cr)
    if ext == "png" and status == 0 then status = cl.cairo_surface_write_to_png(surface, tmp) end
    cl.cairo_surface_finish(surface)
    if status == 0 then status = cl.cairo_surface_status(surface) end
    cl.cairo_surface_destroy(surface)
    if status ~= 0 then
      os.remove(tmp)
      error(require("moe")._where(("moe.plot: cannot write %s: %s"):format(path, ffi.string(cl.cairo_status_to_string(status)))), 0)
    end
    local ok, err = os.rename(tmp, path)
    if not ok then os.remove(tmp); error(require("moe")._where(("moe.plot: cannot write %s: %s"):format(path, tostring(err))), 0) end
    return path, cv.fig
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
  cv.fig.texts[#cv.fig.texts + 1] = s
  return ext.width
end

local function finite(v) return type(v) == "number" and v == v and v > -math.huge and v < math.huge end

-- the largest positive integer key of a table (a list with holes: its length)
local function maxn(t)
  local n = 0
  for k in pairs(t) do if type(k) == "number" and k > n and k == math.floor(k) then n = k end end
  return n
end

-- a value as an error message shows it: its text and its type
local function show(v)
  if type(v) == "string" then return ("%q (a string)"):format(v) end
  if v == nil then return "nil" end
  return ("%s (a %s)"):format(tostring(v), type(v))
end

-- an error at the user's own line (the first caller outside the library)
local function fail(msg) error(require("moe")._where(msg), 0) end

-- about n "nice" ticks covering [lo, hi], the step, and the axis's range.
-- integer (epochs, counts): whole steps only, and only ticks inside the
-- range (no 1.5 between epochs 1 and 2)
local function ticks(lo, hi, n, integer)
  if hi - lo < 1e-12 then lo, hi = lo - 0.5, hi + 0.5 end
  local raw = (hi - lo) / (n or 5)
  local mag = 10 ^ math.floor(math.log10(raw))
  local step = mag
  for _, m in ipairs(integer and { 1, 2, 5, 10 } or { 1, 2, 2.5, 5, 10 }) do
    if m * mag >= raw then step = m * mag; break end
  end
  local out = {}
  if integer then
    step = math.max(1, math.floor(step + 0.5))
    for v = math.ceil(lo / step - 1e-9) * step, hi + 1e-9, step do out[#out + 1] = v end
    return out, step, lo, hi
  end
  for v = math.floor(lo / step) * step, hi + step * 0.5, step do out[#out + 1] = v end
  return out, step, math.min(lo, out[1]), math.max(hi, out[#out])
end

-- a tick's label: as many decimals as the step has (0.25 -> 2, 0.5 -> 1, 2 -> 0)
local function fmt_tick(v, step)
  local d = 0
  while d < 8 and math.abs(step * 10 ^ d - math.floor(step * 10 ^ d + 0.5)) > 1e-6 * 10 ^ d * step do d = d + 1 end
  if d == 0 then return ("%d"):format(math.floor(v + 0.5)) end
  local s = ("%." .. d .. "f"):format(v)
  return s == ("-%." .. d .. "f"):format(0) and s:sub(2) or s -- (no "-0.0")
end

-- one panel: axes with ticks in the rectangle (x0, y0, w, h); returns data->pixel
-- maps and the panel's record in the figure
local function axes(cv, box, xr, yr, opts, integer_x)
  local cl, cr = C, cv.cr
  local x0, y0, w, h = box[1], box[2], box[3], box[4]
  local xt, xs, xlo, xhi = ticks(xr[1], xr[2], opts.xticks or 6, integer_x)
  local yt, ys, ylo, yhi = ticks(yr[1], yr[2], 5)
  local function X(v) return x0 + (v - xlo) / (xhi - xlo) * w end
  local function Y(v) return y0 + h - (v - ylo) / (yhi - ylo) * h end
  local panel = { title = opts.title, box = { x0, y0, w, h }, xticks = {}, yticks = {}, lines = {} }
  cv.fig.panels[#cv.fig.panels + 1] = panel
  cl.cairo_set_line_width(cr, 1)
  for _, v in ipairs(yt) do -- grid
    cl.cairo_set_source_rgb(cr, 0.9, 0.9, 0.9)
    cl.cairo_move_to(cr, x0, Y(v)); cl.cairo_line_to(cr, x0 + w, Y(v)); cl.cairo_stroke(cr)
    local label = fmt_tick(v, ys)
    panel.yticks[#panel.yticks + 1] = label
    text(cv, label, x0 - 6, Y(v), { align = "right", valign = "middle", size = 10 })
  end
  if not opts.categories then
    for _, v in ipairs(xt) do
      local label = fmt_tick(v, xs)
      panel.xticks[#panel.xticks + 1] = label
      text(cv, label, X(v), y0 + h + 14, { align = "center", size = 10 })
    end
  end
  cl.cairo_set_source_rgb(cr, 0.3, 0.3, 0.3)
  cl.cairo_rectangle(cr, x0, y0, w, h)
  cl.cairo_stroke(cr)
  if opts.title then text(cv, opts.title, x0 + w / 2, y0 - 8, { align = "center", size = 12 }) end
  if opts.xlabel then text(cv, opts.xlabel, x0 + w / 2, y0 + h + 30, { align = "center" }) end
  if opts.ylabel then text(cv, opts.ylabel, x0 - 44, y0 + h / 2, { align = "center", rotate = -math.pi / 2 }) end
  return X, Y, panel
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
      if finite(v) then lo, hi = math.min(lo, v), math.max(hi, v) end
    end
  end
  if lo > hi then lo, hi = 0, 1 end
  return { lo, hi }
end

local function check_series(series, where)
  if type(series) ~= "table" or #series == 0 then
    fail(("%s: expected a list of series {name=, x=, y=}, got %s"):format(where, show(series)))
  end
  for i, s in ipairs(series) do
    if type(s) ~= "table" or type(s.y) ~= "table" or next(s.y) == nil then fail(("%s: series %d has no y values"):format(where, i)) end
    local ny = maxn(s.y)
    if s.x ~= nil then
      if type(s.x) ~= "table" then fail(("%s: series %d: x must be a list of numbers, got %s"):format(where, i, show(s.x))) end
      if #s.x ~= ny then fail(("%s: series %d has %d x values and %d y values"):format(where, i, #s.x, ny)) end
    end
    for j = 1, ny do
      local v = s.y[j]
      if v ~= nil and type(v) ~= "number" then fail(("%s: series %d: y[%d] must be a number, got %s"):format(where, i, j, show(v))) end
    end
    if s.err ~= nil then
      if type(s.err) ~= "table" then
        fail(("%s: series %d: err must be a list of numbers (a spread per point), got %s"):format(where, i, show(s.err)))
      end
      if maxn(s.err) > ny then fail(("%s: series %d has %d err values and %d y values"):format(where, i, maxn(s.err), ny)) end
    end
  end
end

-- lines with markers; a point whose x or y is missing, NaN or infinite ends a
-- segment (a gap, not a line across it). A series' err (a spread per point,
-- the standard deviation over seeds, say) draws a band y +- err under the
-- line, or error bars with opts.errors = "bars"
local function draw_lines(cv, box, series, opts)
  local xs, ys = {}, {}
  local integer = opts.integer_x
  for i, s in ipairs(series) do
    local n = maxn(s.y)
    local x = s.x
    if not x then x = {}; for j = 1, n do x[j] = j end end
    xs[i] = x
    local ext = {}
    for j = 1, n do
      local v, e = s.y[j], s.err and s.err[j]
      if finite(v) and finite(x[j]) then
        ext[#ext + 1] = v
        if finite(e) then ext[#ext + 1] = v - e; ext[#ext + 1] = v + e end
      end
      if opts.integer_x == nil and finite(x[j]) and x[j] ~= math.floor(x[j]) then integer = false end
    end
    ys[i] = ext
  end
  if integer == nil then integer = true end -- every x a whole number: epochs, counts
  local X, Y, panel = axes(cv, box, range(xs), opts.ylim or range(ys), opts, integer)
  local cl, cr = C, cv.cr
  local bars = opts.errors == "bars"
  for i, s in ipairs(series) do
    local c, x = color(i), xs[i]
    local rec = { name = s.name or ("series " .. i), segments = {}, bands = {}, errorbars = {}, markers = 0 }
    panel.lines[i] = rec
    local n = maxn(s.y)
    local function ok(j) return finite(s.y[j]) and finite(x[j]) end
    -- runs of consecutive drawable points
    local function runs(pred)
      local out, cur = {}, nil
      for j = 1, n do
        if pred(j) then
          if not cur then cur = {}; out[#out + 1] = cur end
          cur[#cur + 1] = j
        else cur = nil end
      end
      return out
    end
    if s.err then
      local with_err = function(j) return ok(j) and finite(s.err[j]) end
      if bars then
        cl.cairo_set_source_rgb(cr, c[1], c[2], c[3])
        cl.cairo_set_line_width(cr, 1.5)
        for j = 1, n do
          if with_err(j) then
            local px, lo, hi = X(x[j]), Y(s.y[j] - s.err[j]), Y(s.y[j] + s.err[j])
            cl.cairo_new_path(cr)
            cl.cairo_move_to(cr, px, lo); cl.cairo_line_to(cr, px, hi)
            cl.cairo_move_to(cr, px - 4, lo); cl.cairo_line_to(cr, px + 4, lo)
            cl.cairo_move_to(cr, px - 4, hi); cl.cairo_line_to(cr, px + 4, hi)
            cl.cairo_stroke(cr)
            rec.errorbars[#rec.errorbars + 1] = { px, lo, hi }
          end
        end
      else
        cl.cairo_set_source_rgba(cr, c[1], c[2], c[3], 0.2)
        for _, run in ipairs(runs(with_err)) do
          if #run >= 2 then
            local band = {}
            cl.cairo_new_path(cr)
            for k, j in ipairs(run) do
              band[k] = { X(x[j]), Y(s.y[j] - s.err[j]), Y(s.y[j] + s.err[j]) }
              if k == 1 then cl.cairo_move_to(cr, band[k][1], band[k][3]) else cl.cairo_line_to(cr, band[k][1], band[k][3]) end
            end
            for k = #band, 1, -1 do cl.cairo_line_to(cr, band[k][1], band[k][2]) end
            cl.cairo_close_path(cr)
            cl.cairo_fill(cr)
            rec.bands[#rec.bands + 1] = band
          end
        end
      end
    end
    cl.cairo_set_source_rgb(cr, c[1], c[2], c[3])
    cl.cairo_set_line_width(cr, 2)
    cl.cairo_new_path(cr)
    for _, run in ipairs(runs(ok)) do
      if #run >= 2 then -- (a lone point is its marker only)
        local seg = {}
        for k, j in ipairs(run) do
          seg[k] = { X(x[j]), Y(s.y[j]) }
          if k == 1 then cl.cairo_move_to(cr, seg[k][1], seg[k][2]) else cl.cairo_line_to(cr, seg[k][1], seg[k][2]) end
        end
        rec.segments[#rec.segments + 1] = seg
      end
    end
    cl.cairo_stroke(cr)
    for j = 1, n do
      if ok(j) and opts.markers ~= false then
        cl.cairo_new_path(cr)
        cl.cairo_arc(cr, X(x[j]), Y(s.y[j]), 2.5, 0, 2 * math.pi)
        cl.cairo_fill(cr)
        rec.markers = rec.markers + 1
      end
    end
  end
  local names = {}
  local spread = opts.err_label == nil and "\194\177 sd" or opts.err_label -- (what err is, in the legend)
  for i, s in ipairs(series) do names[i] = (s.name or ("series " .. i)) .. (s.err and spread and (" (" .. spread .. ")") or "") end
  legend(cv, names, box[1] + box[3] + 12, box[2] + 10)
end

-- each named option of opts: nil or a positive integer (a count, a size in pixels)
local function check_counts(opts, where, ...)
  for _, k in ipairs { ... } do
    local v = opts[k]
    if v ~= nil and (type(v) ~= "number" or v < 1 or v ~= math.floor(v)) then
      fail(("%s: %s must be a positive integer, got %s"):format(where, k, show(v)))
    end
  end
end

-- opts.errors, the way err is drawn: nil, "band" or "bars"
local function check_errors(opts, where)
  if opts.errors ~= nil and opts.errors ~= "band" and opts.errors ~= "bars" then
    fail(('%s: errors must be "band" or "bars", got %s'):format(where, show(opts.errors)))
  end
end

-- lines(series, path, {title, xlabel, ylabel, width, height, ylim, errors = "band"|"bars",
-- err_label = "± sd", integer_x}): a line chart; series {name, x, y, err}; x ticks are
-- whole numbers when every x is (integer_x = false to not)
function plot.lines(series, path, opts)
  check_series(series, "plot.lines")
  opts = opts or {}
  check_errors(opts, "plot.lines")
  local w, h = opts.width or 720, opts.height or 420
  local cv = canvas(path, w, h)
  draw_lines(cv, { 70, 40, w - 70 - 160, h - 40 - 60 }, series, opts)
  return cv.finish()
end

-- panels(panels, path, {title, cols, errors, err_label, markers, width, height}): line charts
-- side by side, cols to a row (3 by default); each panel {title, series, xlabel, ylabel,
-- ylim} is drawn as plot.lines draws its series, with its own axes and legend
function plot.panels(panels, path, opts)
  opts = opts or {}
  if type(panels) ~= "table" or #panels == 0 then
    fail(("plot.panels: expected a list of panels {title=, series=}, got %s"):format(show(panels)))
  end
  for i, p in ipairs(panels) do
    if type(p) ~= "table" then fail(("plot.panels: panel %d must be a table {title=, series=}, got %s"):format(i, show(p))) end
    check_series(p.series, ("plot.panels: panel %d"):format(i))
  end
  check_errors(opts, "plot.panels")
  check_counts(opts, "plot.panels", "cols", "width", "height")
  local cols = math.min(#panels, opts.cols or 3)
  local rows = math.ceil(#panels / cols)
  local pw, ph = opts.width or 440, opts.height or 300
  local top = opts.title and 30 or 0
  local cv = canvas(path, cols * pw, rows * ph + top)
  if opts.title then text(cv, opts.title, cols * pw / 2, 20, { align = "center", size = 14 }) end
  for i, p in ipairs(panels) do
    local col, row = (i - 1) % cols, math.floor((i - 1) / cols)
    draw_lines(cv, { col * pw + 64, top + row * ph + 30, pw - 64 - 150, ph - 30 - 50 }, p.series,
      { title = p.title, xlabel = p.xlabel, ylabel = p.ylabel, ylim = p.ylim, errors = opts.errors,
        err_label = opts.err_label, markers = opts.markers, integer_x = opts.integer_x, xticks = 5 })
  end
  return cv.finish()
end

-- histograms(panels, path, {bins = 20, range = {lo, hi}, title, xlabel, cols}): the
-- distribution of each group's values as a step outline of counts per bin, groups
-- overlaid in a panel; panels {title, groups = {{name, values}, ...}}. Every panel
-- shares the bins (range: all the finite values' span), so that panels compare; a
-- value outside the range is counted in the edge bin, a NaN in no bin
function plot.histograms(panels, path, opts)
  opts = opts or {}
  if type(panels) ~= "table" or #panels == 0 then
    fail(("plot.histograms: expected a list of panels {title=, groups=}, got %s"):format(show(panels)))
  end
  check_counts(opts, "plot.histograms", "bins", "cols", "width", "height")
  local bins = opts.bins or 20
  local lo, hi = math.huge, -math.huge
  for i, p in ipairs(panels) do
    if type(p) ~= "table" or type(p.groups) ~= "table" or #p.groups == 0 then
      fail(("plot.histograms: panel %d must have groups {{name=, values=}, ...}"):format(i))
    end
    for j, g in ipairs(p.groups) do
      if type(g) ~= "table" or type(g.values) ~= "table" then
        fail(("plot.histograms: panel %d, group %d has no list of values"):format(i, j))
      end
      for k, v in ipairs(g.values) do
        if type(v) ~= "number" then
          fail(("plot.histograms: panel %d, group %d: value %d must be a number, got %s"):format(i, j, k, show(v)))
        end
        if finite(v) then lo, hi = math.min(lo, v), math.max(hi, v) end
      end
    end
  end
  if opts.range ~= nil then
    local r = opts.range
    if type(r) ~= "table" or not finite(r[1]) or not finite(r[2]) or not (r[1] < r[2]) then
      fail(("plot.histograms: range must be {lo, hi} with lo < hi, got %s"):format(show(r)))
    end
    lo, hi = r[1], r[2]
  end
  if not (lo < hi) then -- (no finite value, or all equal)
    if lo > hi then lo, hi = 0, 1 else lo, hi = lo - 0.5, hi + 0.5 end
  end
  local wbin = (hi - lo) / bins
  local out = {}
  for i, p in ipairs(panels) do
    local series = {}
    for j, g in ipairs(p.groups) do
      local counts = {}
      for b = 1, bins do counts[b] = 0 end
      for _, v in ipairs(g.values) do
        if finite(v) then
          local b = math.min(bins, math.max(1, math.floor((v - lo) / wbin) + 1))
          counts[b] = counts[b] + 1
        end
      end
      -- a step outline: up and across each bin
      local xs, ys = { lo }, { 0 }
      for b = 1, bins do
        xs[#xs + 1], ys[#ys + 1] = lo + (b - 1) * wbin, counts[b]
        xs[#xs + 1], ys[#ys + 1] = lo + b * wbin, counts[b]
      end
      xs[#xs + 1], ys[#ys + 1] = hi, 0
      series[j] = { name = g.name or ("group " .. j), x = xs, y = ys, counts = counts }
    end
    out[i] = { title = p.title, series = series, xlabel = opts.xlabel, ylabel = opts.ylabel or "runs" }
  end
  local file, fig = plot.panels(out, path, { title = opts.title, cols = opts.cols, markers = false, integer_x = false,
    width = opts.width, height = opts.height })
  fig.bins = { lo = lo, hi = hi, width = wbin, counts = {} }
  for i, p in ipairs(out) do
    fig.bins.counts[i] = {}
    for j, s in ipairs(p.series) do fig.bins.counts[i][j] = s.counts end
  end
  return file, fig
end

-- the per-expert token counts of a sparse layer's router: a heatmap's
-- (expert_load's), not a panel each
local function per_expert(name) return name:match("expert_%d+_tokens$") ~= nil end

-- history(history, path, {metrics = names, title}): one panel per quantity
-- (loss, then each metric), training and validation curves against the epoch
-- (whole-number ticks); an epoch without a value is a gap in its curve
function plot.history(history, path, opts)
  opts = opts or {}
  if type(history) ~= "table" or type(history.history) ~= "table" then
    fail(("plot.history: expected the History that fit returns, got %s"):format(show(history)))
  end
  local names = opts.metrics
  if not names then
    names = {}
    for k in pairs(history.history) do if not k:match("^val_") and not per_expert(k) then names[#names + 1] = k end end
    table.sort(names, function(a, b) if a == "loss" then return true elseif b == "loss" then return false end return a < b end)
  end
  if #names == 0 then fail("plot.history: the history has no epochs") end
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
    if not train then fail(("plot.history: no values for '%s'"):format(tostring(name))) end
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
-- one bar per value, or groups of bars (one color per series); a NaN is no bar
function plot.bars(values, path, opts)
  opts = opts or {}
  local groups
  if type(values) ~= "table" or next(values) == nil then
    fail(("plot.bars: expected a list of numbers or of lists, got %s"):format(show(values)))
  end
  if type(values[1]) == "number" then groups = { values } else groups = values end
  local n = #groups[1]
  for g, v in ipairs(groups) do
    if type(v) ~= "table" then fail(("plot.bars: series %d must be a list of numbers, got %s"):format(g, show(v))) end
    if #v ~= n then fail(("plot.bars: series %d has %d values, series 1 has %d"):format(g, #v, n)) end
  end
  local w, h = opts.width or math.max(480, 60 * n + 240), opts.height or 400
  local cv = canvas(path, w, h)
  local lo = math.min(0, range(groups)[1])
  local box = { 70, 40, w - 70 - 160, h - 40 - 60 }
  local _, Y, panel = axes(cv, box, { 0.5, n + 0.5 }, { lo, range(groups)[2] },
    { categories = true, title = opts.title, xlabel = opts.xlabel, ylabel = opts.ylabel })
  panel.bars = {}
  local cl, cr = C, cv.cr
  local slot = box[3] / n
  local bw = slot * 0.8 / #groups
  for g, v in ipairs(groups) do
    local c = color(g)
    cl.cairo_set_source_rgb(cr, c[1], c[2], c[3])
    for i = 1, n do
      if finite(v[i]) then
        local x = box[1] + (i - 1) * slot + slot * 0.1 + (g - 1) * bw
        local y0, y1 = Y(0), Y(v[i])
        cl.cairo_rectangle(cr, x, math.min(y0, y1), bw, math.abs(y1 - y0))
        cl.cairo_fill(cr)
        panel.bars[#panel.bars + 1] = { x, math.min(y0, y1), bw, math.abs(y1 - y0) }
      end
    end
  end
  for i = 1, n do
    local label = opts.labels and opts.labels[i] or tostring(i)
    panel.xticks[i] = label
    text(cv, label, box[1] + (i - 0.5) * slot, box[2] + box[4] + 14, { align = "center", size = 10 })
  end
  if #groups > 1 or opts.group_names then
    local names = {}
    for g = 1, #groups do names[g] = opts.group_names and opts.group_names[g] or ("series " .. g) end
    legend(cv, names, box[1] + box[3] + 12, box[2] + 10)
  end
  return cv.finish()
end

-- a sequential colour map, light (low) to dark blue (high); every channel falls
-- as the value grows, so darker is always more
local CMAP = { { 0.97, 0.98, 1.0 }, { 0.78, 0.86, 0.94 }, { 0.42, 0.68, 0.84 }, { 0.13, 0.44, 0.71 },
  { 0.03, 0.19, 0.42 } }
local function cmap(t)
  t = math.max(0, math.min(1, t))
  local f = t * (#CMAP - 1)
  local i = math.min(math.floor(f), #CMAP - 2)
  local u, a, b = f - i, CMAP[i + 1], CMAP[i + 2]
  return { a[1] + (b[1] - a[1]) * u, a[2] + (b[2] - a[2]) * u, a[3] + (b[3] - a[3]) * u }
end
local MISSING = { 0.85, 0.85, 0.85 } -- a NaN or missing cell

-- heatmap(matrix, path, {row_labels, col_labels, title, xlabel, ylabel, vmin, vmax,
-- annotate, format}): a grid of cells coloured by value (a colour bar beside
-- it); matrix: a list of rows (lists of numbers) or a 2-D tensor. A NaN or
-- missing value is a grey cell. Cells big enough show their value (format,
-- "%.2f" by default) unless annotate = false.
function plot.heatmap(matrix, path, opts)
  opts = opts or {}
  local where = opts._where or "plot.heatmap"
  local core = require("moe").core
  if core.is_tensor(matrix) then
    if matrix:dim() ~= 2 then
      fail(("%s: expected a 2-D tensor, got one of shape [%s]"):format(where, table.concat(matrix:shape(), ", ")))
    end
    matrix = matrix:to("float64"):totable()
  end
  if type(matrix) ~= "table" or #matrix == 0 then
    fail(("%s: expected a list of rows (lists of numbers) or a 2-D tensor, got %s"):format(where, show(matrix)))
  end
  local R, Cn = #matrix, nil
  local lo, hi = math.huge, -math.huge
  for r, row in ipairs(matrix) do
    if type(row) ~= "table" then fail(("%s: row %d must be a list of numbers, got %s"):format(where, r, show(row))) end
    local n = maxn(row)
    Cn = Cn or n
    if n ~= Cn then fail(("%s: row %d has %d values, row 1 has %d"):format(where, r, n, Cn)) end
    for c = 1, n do
      local v = row[c]
      if v ~= nil and type(v) ~= "number" then fail(("%s: row %d, column %d must be a number, got %s"):format(where, r, c, show(v))) end
      if finite(v) then lo, hi = math.min(lo, v), math.max(hi, v) end
    end
  end
  if Cn == 0 then fail(("%s: the rows have no values"):format(where)) end
  if lo > hi then lo, hi = 0, 1 end
  local vmin, vmax = opts.vmin or lo, opts.vmax or hi
  for k, v in pairs { vmin = vmin, vmax = vmax } do
    if not finite(v) then fail(("%s: %s must be a finite number, got %s"):format(where, k, show(v))) end
  end
  local function frac(v)
    if vmax - vmin < 1e-300 then return 0.5 end
    return (v - vmin) / (vmax - vmin)
  end
  local cw = math.max(14, math.min(64, 560 / Cn))
  local ch = math.max(14, math.min(40, 360 / R))
  local longest = 1 -- (the row labels' room, at about 6 pixels a character)
  for r = 1, R do longest = math.max(longest, #tostring(opts.row_labels and opts.row_labels[r] or r)) end
  local left, top, bottom, right = math.max(60, 40 + 6 * longest), 46, 64, 120
  local w, h = math.floor(left + Cn * cw + right + 0.5), math.floor(top + R * ch + bottom + 0.5)
  local cv = canvas(path, w, h)
  local cl, cr = C, cv.cr
  local panel = { title = opts.title, box = { left, top, Cn * cw, R * ch }, cells = {}, rows = {}, cols = {},
    vmin = vmin, vmax = vmax }
  cv.fig.panels[#cv.fig.panels + 1] = panel
  local fmt = opts.format or "%.2f"
  local annotate = opts.annotate
  if annotate == nil then annotate = cw >= 30 and ch >= 16 end
  for r = 1, R do
    for c = 1, Cn do
      local v = matrix[r][c]
      local rgb = finite(v) and cmap(frac(v)) or MISSING
      local x, y = left + (c - 1) * cw, top + (r - 1) * ch
      cl.cairo_set_source_rgb(cr, rgb[1], rgb[2], rgb[3])
      cl.cairo_rectangle(cr, x, y, cw - 1, ch - 1) -- (a white line between cells)
      cl.cairo_fill(cr)
      panel.cells[#panel.cells + 1] = { row = r, col = c, value = v == nil and 0 / 0 or v, rgb = rgb,
        x = x, y = y, w = cw - 1, h = ch - 1 }
      if annotate and finite(v) then
        local dark = frac(v) > 0.55
        text(cv, fmt:format(v), x + (cw - 1) / 2, y + (ch - 1) / 2,
          { align = "center", valign = "middle", size = 9, color = dark and { 1, 1, 1 } or { 0.1, 0.1, 0.1 } })
      end
    end
  end
  for r = 1, R do
    local label = opts.row_labels and opts.row_labels[r] and tostring(opts.row_labels[r]) or tostring(r)
    panel.rows[r] = label
    text(cv, label, left - 6, top + (r - 0.5) * ch, { align = "right", valign = "middle", size = 10 })
  end
  local every = math.max(1, math.ceil(Cn * 22 / (Cn * cw))) -- (a label every so many columns when they are narrow)
  for c = 1, Cn do
    local label = opts.col_labels and opts.col_labels[c] and tostring(opts.col_labels[c]) or tostring(c)
    if (c - 1) % every == 0 then
      panel.cols[#panel.cols + 1] = label
      text(cv, label, left + (c - 0.5) * cw, top + R * ch + 14, { align = "center", size = 10 })
    end
  end
  if opts.title then text(cv, opts.title, left + Cn * cw / 2, top - 14, { align = "center", size = 12 }) end
  if opts.xlabel then text(cv, opts.xlabel, left + Cn * cw / 2, top + R * ch + 34, { align = "center" }) end
  if opts.ylabel then text(cv, opts.ylabel, 18, top + R * ch / 2, { align = "center", rotate = -math.pi / 2 }) end
  -- the colour bar: vmin at the bottom, vmax at the top
  local bx, by, bw, bh = left + Cn * cw + 18, top, 14, math.max(R * ch, 60)
  local steps = 32
  for k = 1, steps do
    local rgb = cmap((k - 0.5) / steps)
    cl.cairo_set_source_rgb(cr, rgb[1], rgb[2], rgb[3])
    cl.cairo_rectangle(cr, bx, by + bh - k * bh / steps, bw, bh / steps + 0.5)
    cl.cairo_fill(cr)
  end
  panel.colorbar = { bx, by, bw, bh }
  panel.colorbar_ticks = {}
  local bt, bs = ticks(vmin, vmax, 4)
  for _, v in ipairs(bt) do
    if v >= vmin - 1e-12 and v <= vmax + 1e-12 and vmax > vmin then
      local label = fmt_tick(v, bs)
      panel.colorbar_ticks[#panel.colorbar_ticks + 1] = label
      text(cv, label, bx + bw + 4, by + bh - frac(v) * bh, { valign = "middle", size = 9 })
    end
  end
  return cv.finish()
end

-- the mean gate weight per expert of each gate: a list of [B, E] tensors (MMoE's
-- gate_weights: one per task), one [B, E] tensor (TabularMoELayer's), or lists
-- of E numbers
local function mean_gates(gates, where)
  local core = require("moe").core
  if core.is_tensor(gates) then gates = { gates } end
  if type(gates) ~= "table" or #gates == 0 then
    fail(("%s: expected a list of [B, E] gate tensors, got %s"):format(where, show(gates)))
  end
  local rows = {}
  for t, g in ipairs(gates) do
    if core.is_tensor(g) then
      if g:dim() ~= 2 then fail(("%s: gates %d must be [B, E], got [%s]"):format(where, t, table.concat(g:shape(), ","))) end
      rows[t] = g:to("float64"):mean(1):totable()
    elseif type(g) == "table" then
      rows[t] = g
    else
      fail(("%s: gates %d must be a [B, E] tensor or a list of numbers, got %s"):format(where, t, show(g)))
    end
  end
  return rows
end

-- expert_utilisation(gates, path, {task_names, title, kind = "heatmap"|"bars"}): the
-- mean gate weight of each expert for each task, as a tasks x experts heatmap
-- (or grouped bars); gates as MMoE:gate_weights(x) gives them
function plot.expert_utilisation(gates, path, opts)
  opts = opts or {}
  local rows = mean_gates(gates, "plot.expert_utilisation")
  local names, labels = {}, {}
  for t = 1, #rows do names[t] = opts.task_names and opts.task_names[t] or ("task " .. t) end
  for e = 1, #rows[1] do labels[e] = "E" .. e end
  local title = opts.title or "mean gate weight per expert"
  if opts.kind == "bars" then
    return plot.bars(rows, path, { labels = labels, group_names = names, title = title, xlabel = "expert",
      ylabel = "mean gate weight" })
  elseif opts.kind ~= nil and opts.kind ~= "heatmap" then
    fail(('plot.expert_utilisation: kind must be "heatmap" or "bars", got %s'):format(show(opts.kind)))
  end
  return plot.heatmap(rows, path, { row_labels = names, col_labels = labels, title = title, xlabel = "expert",
    ylabel = "task", vmin = 0, _where = "plot.expert_utilisation" })
end

-- expert_load(history, path, {layer, normalize = true, title}): a sparse layer's
-- routing over training, experts x epochs, from the History's
-- expert_<e>_tokens (its router's metrics: the mean tokens per batch sent to
-- expert e); each epoch's column as shares of its tokens unless normalize =
-- false. layer: the router's name, when several layers' counts are logged
-- (as <name>_expert_<e>_tokens)
function plot.expert_load(history, path, opts)
  opts = opts or {}
  if type(history) ~= "table" or type(history.history) ~= "table" then
    fail(("plot.expert_load: expected the History that fit returns, got %s"):format(show(history)))
  end
  local found = {} -- prefix -> experts
  for k in pairs(history.history) do
    local pre, e = k:match("^(.-)expert_(%d+)_tokens$")
    if pre and pre:sub(1, 4) ~= "val_" then found[pre] = math.max(found[pre] or 0, tonumber(e)) end
  end
  local pres = {}
  for p in pairs(found) do pres[#pres + 1] = p == "" and "(none)" or p:sub(1, -2) end
  table.sort(pres)
  local pre
  if opts.layer ~= nil then
    if type(opts.layer) ~= "string" then fail(("plot.expert_load: layer must be a layer's name, got %s"):format(show(opts.layer))) end
    pre = opts.layer .. "_"
    if not found[pre] then
      fail(("plot.expert_load: the history has no %sexpert_<e>_tokens (layers with counts: %s)")
        :format(pre, #pres > 0 and table.concat(pres, ", ") or "none"))
    end
  else
    if #pres == 0 then fail("plot.expert_load: the history has no expert_<e>_tokens (a sparse MoeLayer's router metrics)") end
    if #pres > 1 then
      fail(("plot.expert_load: the history has several layers' expert counts (%s): choose one with {layer = name}")
        :format(table.concat(pres, ", ")))
    end
    pre = next(found)
  end
  local E, epochs = found[pre], history.epoch or {}
  local m = {}
  for e = 1, E do
    m[e] = {}
    local vals = history.history[pre .. "expert_" .. e .. "_tokens"] or {}
    for j = 1, #epochs do m[e][j] = type(vals[j]) == "number" and vals[j] or 0 / 0 end
  end
  local normalize = opts.normalize ~= false
  if normalize then
    for j = 1, #epochs do
      local sum = 0
      for e = 1, E do if finite(m[e][j]) then sum = sum + m[e][j] end end
      for e = 1, E do m[e][j] = sum > 0 and m[e][j] / sum or 0 / 0 end
    end
  end
  if #epochs == 0 then fail("plot.expert_load: the history has no epochs") end
  local rows, cols = {}, {}
  for e = 1, E do rows[e] = "E" .. e end
  for j = 1, #epochs do cols[j] = tostring(epochs[j]) end
  return plot.heatmap(m, path, { row_labels = rows, col_labels = cols, xlabel = "epoch", ylabel = "expert", vmin = 0,
    title = opts.title or (normalize and "share of the routed tokens per expert" or "tokens per expert (mean per batch)"),
    format = normalize and "%.2f" or "%.0f", _where = "plot.expert_load" })
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
