-- moe.plot: charts written as PNG and SVG files. The checks read the files
-- themselves: the SVG's text groups (one glyph per character, in drawing
-- order), its paths (strokes, fills, colours, coordinates), and the PNG's
-- pixels (decoded with cairo, apart from the plot module).
local moe = require "moe"
local H = require "helpers"
local ffi = require "ffi"

local read = H.read_file
local bin = os.getenv("MOELUA_BIN") or "build/moelua"
-- width and height from a PNG's IHDR chunk
local function png_size(s)
  local function u32(i) local a, b, c, d = s:byte(i, i + 3); return ((a * 256 + b) * 256 + c) * 256 + d end
  return u32(17), u32(21)
end

-- ------------------------------------------------------------------ reading the files

-- the SVG's text groups: a list of glyph-id lists, in document order
local function svg_texts(svg)
  local out = {}
  for body in svg:gmatch('<g style="fill:[^"]*">(.-)</g>') do
    local ids = {}
    for id in body:gmatch('<use xlink:href="#([%w%-]+)"') do ids[#ids + 1] = id end
    out[#out + 1] = ids
  end
  return out
end
local function chars(s)
  local out = {}
  for c in s:gmatch("[%z\1-\127\194-\244][\128-\191]*") do out[#out + 1] = c end
  return out
end
-- the texts the figure says it drew are the SVG's, glyph for glyph: as many
-- groups, each with one glyph per character, and one glyph id for each
-- character (and the other way round) throughout the file
local function assert_texts(svg, fig)
  local groups = svg_texts(svg)
  assert.equal(#fig.texts, #groups)
  local by_char, by_glyph = {}, {}
  for k, s in ipairs(fig.texts) do
    local cs = chars(s)
    assert.equal(#cs, #groups[k], ("text %d, %q"):format(k, s))
    for i, c in ipairs(cs) do
      local id = groups[k][i]
      -- (the same character at another size is another font: another id, so key by both)
      by_char[c .. "@" .. id:match("^glyph(%d+)")] = by_char[c .. "@" .. id:match("^glyph(%d+)")] or id
      assert.equal(by_char[c .. "@" .. id:match("^glyph(%d+)")], id, ("%q in %q"):format(c, s))
      by_glyph[id] = by_glyph[id] or c
      assert.equal(by_glyph[id], c, ("glyph %s in %q"):format(id, s))
    end
  end
end

-- the SVG's paths: {style = {...}, subpaths = {{{x, y}, ...}, ...}}
local function svg_paths(svg)
  local out = {}
  for style, d in svg:gmatch('<path style="([^"]*)" d="([^"]*)"/>') do
    local st = {}
    for k, v in style:gmatch("([%w%-]+):([^;]+)") do st[k] = v end
    local subs, cur = {}, nil
    for cmd, args in d:gmatch("([MLCZ])([^MLCZ]*)") do
      local nums = {}
      for n in args:gmatch("[%-%d%.e]+") do nums[#nums + 1] = tonumber(n) end
      if cmd == "M" then cur = { { nums[1], nums[2] } }; subs[#subs + 1] = cur
      elseif cmd == "L" then cur[#cur + 1] = { nums[1], nums[2] }
      elseif cmd == "C" then cur[#cur + 1] = { nums[5], nums[6] } end
    end
    out[#out + 1] = { style = st, subpaths = subs }
  end
  return out
end
local function rgb_of(css) -- "rgb(12%,47%,71%)" -> {0.12, 0.47, 0.71}
  local r, g, b = css:match("rgb%(([%d.]+)%%,([%d.]+)%%,([%d.]+)%%%)")
  return r and { tonumber(r) / 100, tonumber(g) / 100, tonumber(b) / 100 }
end
local function near_rgb(a, b, tol)
  for i = 1, 3 do if math.abs(a[i] - b[i]) > (tol or 1e-3) then return false end end
  return true
end
-- (cairo keeps coordinates in 1/256 of a pixel)
local PX = 1 / 256 + 1e-6
local function same_points(a, b, tol)
  if #a ~= #b then return false end
  for i = 1, #a do
    if math.abs(a[i][1] - b[i][1]) > (tol or PX) or math.abs(a[i][2] - b[i][2]) > (tol or PX) then return false end
  end
  return true
end
-- the series' stroked lines (2 pixels wide, in its colour)
local PALETTE = { { 0.12, 0.47, 0.71 }, { 1.0, 0.5, 0.05 }, { 0.17, 0.63, 0.17 } }
local function strokes(paths, rgb, width)
  local out = {}
  for _, p in ipairs(paths) do
    if p.style["stroke-width"] == (width or "2") and p.style.stroke and near_rgb(rgb_of(p.style.stroke), rgb) then
      out[#out + 1] = p
    end
  end
  return out
end
local function fills(paths, rgb, opacity)
  local out = {}
  for _, p in ipairs(paths) do
    if p.style.fill and rgb_of(p.style.fill) and near_rgb(rgb_of(p.style.fill), rgb)
      and (opacity == nil or math.abs(tonumber(p.style["fill-opacity"]) - opacity) < 1e-6) then
      out[#out + 1] = p
    end
  end
  return out
end

-- a PNG's pixels, through cairo
pcall(ffi.cdef, [[
typedef struct _cairo_surface cairo_surface_t;
cairo_surface_t *cairo_image_surface_create_from_png(const char *filename);
unsigned char *cairo_image_surface_get_data(cairo_surface_t *surface);
int cairo_image_surface_get_stride(cairo_surface_t *surface);
int cairo_image_surface_get_width(cairo_surface_t *surface);
void cairo_surface_flush(cairo_surface_t *surface);
void cairo_surface_destroy(cairo_surface_t *surface);
]])
local cairo = ffi.load("libcairo.so.2")
local function png_pixels(path)
  local s = cairo.cairo_image_surface_create_from_png(path)
  cairo.cairo_surface_flush(s)
  local data, stride = cairo.cairo_image_surface_get_data(s), cairo.cairo_image_surface_get_stride(s)
  -- (ARGB32, native-endian words: on a little-endian machine B, G, R, A)
  local function at(x, y)
    local o = math.floor(y) * stride + math.floor(x) * 4
    return { data[o + 2] / 255, data[o + 1] / 255, data[o] / 255 }
  end
  return at, function() cairo.cairo_surface_destroy(s) end
end

local function run(cmd)
  local p = io.popen(cmd .. " 2>&1")
  local out = p:read("*a")
  p:close()
  return out
end

describe("moe.plot", function()
  local dir
  before_each(function()
    dir = os.tmpname(); os.remove(dir); os.execute("mkdir -p " .. dir)
  end)
  after_each(function() os.execute("rm -rf " .. dir) end)

  it("draws a History as PNG and SVG, one panel per quantity", function()
    local h = { epoch = { 1, 2, 3 }, history = { loss = { 0.5, 0.3, 0.2 }, val_loss = { 0.6, 0.4, 0.35 },
      auc = { 0.8, 0.9, 0.95 }, val_auc = { 0.7, 0.85, 0.9 } } }
    local png = moe.plot.history(h, dir .. "/h.png")
    local s = read(png)
    assert.equal("\137PNG\r\n\26\n", s:sub(1, 8))
    local w, ht = png_size(s)
    assert.equal(720, w)           -- two panels of 360 pixels
    assert.is_true(ht > 200)
    local svg = read(moe.plot.history(h, dir .. "/h.svg"))
    assert.matches("<svg", svg)
    assert.is_true(#svg > 1000)
    assert.equal("h.png\nh.svg\n", io.popen("ls " .. dir):read("*a")) -- no temporary files left
  end)

  it("labels epochs with whole numbers, also on runs of one, two and three epochs", function()
    for n = 1, 3 do
      local h = { epoch = {}, history = { loss = {}, val_loss = {} } }
      for e = 1, n do h.epoch[e] = e; h.history.loss[e] = 1 / e; h.history.val_loss[e] = 1.2 / e end
      local path, fig = moe.plot.history(h, dir .. "/e" .. n .. ".svg")
      local svg = read(path)
      assert_texts(svg, fig) -- the figure's texts are the file's
      local want = {}
      for e = 1, n do want[e] = tostring(e) end
      assert.same(want, fig.panels[1].xticks)
      -- and those labels are drawn, in that order, as the first texts after the y labels
      local ny = #fig.panels[1].yticks
      for e = 1, n do assert.equal(tostring(e), fig.texts[ny + e]) end
    end
    -- a long run: whole steps, still no fractions
    local h = { epoch = {}, history = { loss = {} } }
    for e = 1, 37 do h.epoch[e] = e; h.history.loss[e] = 1 / e end
    local _, fig = moe.plot.history(h, dir .. "/long.svg")
    assert.same({ "10", "20", "30" }, fig.panels[1].xticks)
    -- not whole numbers (correlations): as many decimals as the step needs
    local _, f2 = moe.plot.lines({ { x = { 0.5, 0.7, 0.9, 1.0 }, y = { 0.5, 1, 1.5, 2 } } }, dir .. "/c.svg")
    assert.same({ "0.5", "0.6", "0.7", "0.8", "0.9", "1.0" }, f2.panels[1].xticks)
    assert.same({ "0.5", "1.0", "1.5", "2.0" }, f2.panels[1].yticks)
    local _, f3 = moe.plot.lines({ { y = { 0.1, 0.35, 0.2 } } }, dir .. "/d.svg")
    assert.same({ "1", "2", "3" }, f3.panels[1].xticks) -- (no x: the points' numbers)
    assert.same({ "0.10", "0.15", "0.20", "0.25", "0.30", "0.35" }, f3.panels[1].yticks)
  end)

  it("leaves a gap at a NaN or missing point instead of a line across it", function()
    local x = { 1, 2, 3, 4, 5, 6, 7 }
    local series = { { name = "nan", x = x, y = { 1, 2, 0 / 0, 4, 5, 6, 7 } },
      { name = "missing", x = x, y = { [1] = 3, [2] = 3.5, [4] = 4, [5] = 5, [7] = 2 } } }
    local path, fig = moe.plot.lines(series, dir .. "/g.svg")
    local svg = read(path)
    assert_texts(svg, fig)
    local paths = svg_paths(svg)
    local lines = fig.panels[1].lines
    -- NaN at 3: points 1-2 and 4-7; missing 3 and 6: 1-2 and 4-5, and 7 alone (its marker only)
    assert.equal(2, #lines[1].segments)
    assert.equal(2, #lines[1].segments[1]); assert.equal(4, #lines[1].segments[2])
    assert.equal(2, #lines[2].segments)
    assert.equal(6, lines[1].markers); assert.equal(5, lines[2].markers)
    for i = 1, 2 do
      local st = strokes(paths, PALETTE[i])
      assert.equal(1, #st)
      -- one stroke, as many subpaths (each begins with a move) as segments, at the same points
      assert.equal(#lines[i].segments, #st[1].subpaths)
      for k, seg in ipairs(lines[i].segments) do assert.is_true(same_points(seg, st[1].subpaths[k]), i .. "/" .. k) end
    end
    -- in the PNG: no colour half way between points 2 and 4 of the first series, colour between 1 and 2
    local p2, f2 = moe.plot.lines({ series[1] }, dir .. "/g.png")
    local seg = f2.panels[1].lines[1].segments
    local at, done = png_pixels(p2)
    local function is_line(px) return near_rgb(px, PALETTE[1], 0.08) end
    local a, b = seg[1][1], seg[1][2]
    assert.is_true(is_line(at((a[1] + b[1]) / 2, (a[2] + b[2]) / 2)))
    local c = seg[2][1]
    assert.is_false(is_line(at((b[1] + c[1]) / 2, (b[2] + c[2]) / 2)))
    done()
    -- the History's gaps: an epoch without a value
    local h = { epoch = { 1, 2, 3, 4 }, history = { loss = { 0.5, 0.3, 0.2, 0.1 }, router_z_loss = { [1] = 0.2, [2] = 0.1, [4] = 0.05 } } }
    local _, fh = moe.plot.history(h, dir .. "/gh.svg")
    assert.equal(1, #fh.panels[2].lines[1].segments)  -- 1-2, then 4 alone
    assert.equal(3, fh.panels[2].lines[1].markers)
  end)

  it("draws a quantity missing from some epochs (a layer metric, a stopped epoch) with gaps", function()
    local h = { epoch = { 1, 2, 3 }, history = { loss = { 0.5, 0.3, 0.2 }, router_z_loss = { [2] = 0.1, [3] = 0.05 },
      val_router_z_loss = { [3] = 0.07 } } }
    local w = png_size(read(moe.plot.history(h, dir .. "/gaps.png")))
    assert.equal(720, w)           -- loss and router_z_loss
    assert.matches("no values for 'nope'", H.error_of(moe.plot.history, h, dir .. "/x.png", { metrics = { "loss", "nope" } }))
    assert.equal("gaps.png\n", io.popen("ls " .. dir):read("*a")) -- the failed one left no file behind
  end)

  it("draws mean +- sd bands (or error bars) from a series' err", function()
    local x = { 0.5, 0.7, 0.9, 1.0 }
    local series = { { name = "a", x = x, y = { 1, 2, 1.5, 3 }, err = { 0.2, 0.3, 0, 0.5 } },
      { name = "b", x = x, y = { 2, 2.5, 2, 2.2 }, err = { 0.1, 0 / 0, 0.4, 0.2 } } }
    local path, fig = moe.plot.lines(series, dir .. "/b.svg")
    local svg = read(path)
    assert_texts(svg, fig)
    local paths = svg_paths(svg)
    local panel = fig.panels[1]
    assert.is_true(tonumber(panel.yticks[#panel.yticks]) >= 3.5) -- the y axis reaches the bands' edges: 3 + 0.5
    assert.equal("a (\194\177 sd)", fig.texts[#fig.texts - 1])
    local lines = panel.lines
    -- a: one band over its 4 points; b: its NaN spread at 0.7 leaves 0.9-1.0 (0.5 alone has no band)
    assert.equal(1, #lines[1].bands); assert.equal(4, #lines[1].bands[1])
    assert.equal(1, #lines[2].bands); assert.equal(2, #lines[2].bands[1])
    local scale -- pixels per unit of y: the same for every point's spread
    for i, s in ipairs(series) do
      local bands = fills(paths, PALETTE[i], 0.2)
      assert.equal(1, #bands)
      local poly = bands[1].subpaths[1]
      local band = lines[i].bands[1]
      -- the polygon: the upper edge left to right, the lower edge back (then closed)
      assert.is_true(#poly >= 2 * #band)
      local first = i == 1 and 1 or 3
      for k, b in ipairs(band) do
        assert.is_near(b[1], poly[k][1], PX); assert.is_near(b[3], poly[k][2], PX)
        assert.is_near(b[1], poly[2 * #band - k + 1][1], PX); assert.is_near(b[2], poly[2 * #band - k + 1][2], PX)
        -- centred on the line's point, as wide as 2 err
        local j = first + k - 1
        local seg_pt
        for _, seg in ipairs(lines[i].segments) do
          for _, pt in ipairs(seg) do if math.abs(pt[1] - b[1]) < 1e-9 then seg_pt = pt end end
        end
        assert.is_near(seg_pt[2], (b[2] + b[3]) / 2, 1e-6)
        if s.err[j] > 0 then
          local sc = (b[2] - b[3]) / (2 * s.err[j])
          scale = scale or sc
          assert.is_near(scale, sc, 1e-6)
        else
          assert.is_near(b[2], b[3], 1e-9) -- no spread: no width
        end
      end
    end
    -- error bars instead: one stroke per point with a spread, the bar and its two caps
    local p2, f2 = moe.plot.lines({ series[1] }, dir .. "/bars.svg", { errors = "bars" })
    local bars = strokes(svg_paths(read(p2)), PALETTE[1], "1.5")
    assert.equal(4, #bars)
    assert.equal(4, #f2.panels[1].lines[1].errorbars)
    assert.equal(0, #f2.panels[1].lines[1].bands)
    for k, p in ipairs(bars) do
      local e = f2.panels[1].lines[1].errorbars[k]
      assert.equal(3, #p.subpaths)
      assert.is_true(same_points({ { e[1], e[2] }, { e[1], e[3] } }, p.subpaths[1]))
    end
  end)

  it("draws a heatmap: one cell per value, darker for more, grey where missing", function()
    local m = { { 0.1, 0.4, 0.2, 0 / 0 }, { 0.9, 0.3, 0.0, 0.6 }, { 0.5, [3] = 0.8, [4] = 0.7 } }
    local path, fig = moe.plot.heatmap(m, dir .. "/m.svg", { row_labels = { "a", "b", "c" },
      col_labels = { "E1", "E2", "E3", "E4" }, title = "heat" })
    local svg = read(path)
    assert_texts(svg, fig)
    local panel = fig.panels[1]
    assert.equal(12, #panel.cells)
    assert.same({ "a", "b", "c" }, panel.rows)
    assert.same({ "E1", "E2", "E3", "E4" }, panel.cols)
    local paths = svg_paths(svg)
    local numbered = {}
    for _, c in ipairs(panel.cells) do
      local want = m[c.row][c.col]
      if want == nil or want ~= want then
        assert.is_true(c.value ~= c.value)
        assert.same({ 0.85, 0.85, 0.85 }, c.rgb)
      else
        assert.equal(want, c.value)
        numbered[#numbered + 1] = c
        assert.is_truthy(fig.texts[1] and table.concat(fig.texts, "|"):find(("%.2f"):format(want), 1, true))
      end
      -- the file has this rectangle, in this colour
      local rect = { { c.x, c.y }, { c.x + c.w, c.y }, { c.x + c.w, c.y + c.h }, { c.x, c.y + c.h } }
      local found = 0
      for _, p in ipairs(fills(paths, c.rgb)) do
        local sp = p.subpaths[1]
        if #sp >= 4 and same_points(rect, { sp[1], sp[2], sp[3], sp[4] }) then found = found + 1 end
      end
      assert.equal(1, found, ("cell %d,%d"):format(c.row, c.col))
    end
    assert.equal(10, #numbered)
    -- darker for more: every channel falls as the value grows; the extremes are the map's ends
    table.sort(numbered, function(a, b) return a.value < b.value end)
    for k = 2, #numbered do
      for ch = 1, 3 do assert.is_true(numbered[k].rgb[ch] <= numbered[k - 1].rgb[ch] + 1e-12) end
    end
    assert.is_true(numbered[1].rgb[1] > 0.9 and numbered[#numbered].rgb[1] < 0.1)
    -- the PNG's pixels at the cells' centres
    local p2, f2 = moe.plot.heatmap(m, dir .. "/m.png", { annotate = false })
    local at, done = png_pixels(p2)
    for _, c in ipairs(f2.panels[1].cells) do
      assert.is_true(near_rgb(at(c.x + c.w / 2, c.y + c.h / 2), c.rgb, 1.5 / 255), c.row .. "," .. c.col)
    end
    done()
    -- a 2-D tensor, with vmin/vmax
    local _, f3 = moe.plot.heatmap(moe.tensor { { 1, 2 }, { 3, 4 } }, dir .. "/t.svg", { vmin = 0, vmax = 8 })
    assert.equal(4, f3.panels[1].cells[4].value)
    assert.same({ "0", "2", "4", "6", "8" }, f3.panels[1].colorbar_ticks)
  end)

  it("draws expert utilisation as a tasks x experts heatmap of mean gate weights", function()
    moe.manual_seed(4)
    local g = { moe.rand(20, 4):softmax(-1), moe.rand(20, 4):softmax(-1) }
    local path, fig = moe.plot.expert_utilisation(g, dir .. "/e.svg", { task_names = { "income", "never_married" } })
    assert_texts(read(path), fig)
    local panel = fig.panels[1]
    assert.same({ "income", "never_married" }, panel.rows)
    assert.same({ "E1", "E2", "E3", "E4" }, panel.cols)
    for _, c in ipairs(panel.cells) do
      local sum = 0 -- the column mean, by hand
      for r = 1, 20 do sum = sum + g[c.row][{ r, c.col }]:item() end
      assert.is_near(sum / 20, c.value, 1e-6)
    end
    assert.equal(0, panel.vmin)
    -- still as bars on request, and for a single [B, E] tensor (TabularMoELayer's gates)
    assert.equal("\137PNG", read(moe.plot.expert_utilisation(g, dir .. "/e.png", { kind = "bars" })):sub(1, 4))
    local _, f1 = moe.plot.expert_utilisation(g[1], dir .. "/e1.svg")
    assert.equal(4, #f1.panels[1].cells)
  end)

  it("draws a sparse layer's expert load over the epochs from the History's expert_<e>_tokens", function()
    local h = { epoch = { 1, 2, 3 }, history = { loss = { 1, 0.5, 0.3 },
      expert_1_tokens = { 10, 20, 30 }, expert_2_tokens = { 30, 20, [3] = 10 }, expert_3_tokens = { 0, 0 } } }
    local path, fig = moe.plot.expert_load(h, dir .. "/l.svg")
    assert_texts(read(path), fig)
    local panel = fig.panels[1]
    assert.same({ "E1", "E2", "E3" }, panel.rows)
    assert.same({ "1", "2", "3" }, panel.cols)
    local got = {}
    for _, c in ipairs(panel.cells) do got[c.row] = got[c.row] or {}; got[c.row][c.col] = c.value end
    assert.same({ 0.25, 0.5, 0.75 }, got[1])
    assert.same({ 0.75, 0.5, 0.25 }, got[2])
    assert.equal(0, got[3][1]); assert.is_true(got[3][3] ~= got[3][3]) -- epoch 3 has no count for E3
    local _, raw = moe.plot.expert_load(h, dir .. "/r.svg", { normalize = false })
    assert.equal(30, raw.panels[1].cells[3].value)
    -- plot.history leaves the per-expert counts to this chart
    local _, fh = moe.plot.history(h, dir .. "/h.svg")
    assert.equal(1, #fh.panels)
    -- two layers' counts: pick one by name
    local h2 = { epoch = { 1 }, history = { r1_expert_1_tokens = { 4 }, r1_expert_2_tokens = { 4 }, r2_expert_1_tokens = { 1 },
      r2_expert_2_tokens = { 3 } } }
    assert.matches("plot_spec%.lua:%d+: plot%.expert_load: the history has several layers' expert counts %(r1, r2%)",
      H.error_of(function() moe.plot.expert_load(h2, dir .. "/x.svg") end))
    local _, f2 = moe.plot.expert_load(h2, dir .. "/r2.svg", { layer = "r2" })
    assert.equal(0.75, f2.panels[1].cells[2].value)
    assert.matches("no r3_expert_<e>_tokens %(layers with counts: r1, r2%)",
      H.error_of(function() moe.plot.expert_load(h2, dir .. "/x.svg", { layer = "r3" }) end))
    assert.matches("plot%.expert_load: the history has no expert_<e>_tokens",
      H.error_of(function() moe.plot.expert_load({ epoch = { 1 }, history = { loss = { 1 } } }, dir .. "/x.svg") end))
  end)

  it("draws tokens per expert, bars and lines", function()
    assert.matches("<svg", read(moe.plot.tokens_per_expert(moe.tensor { 10, 20, 5 }, dir .. "/t.svg")))
    local path, fig = moe.plot.bars({ 3, 0 / 0, 5 }, dir .. "/b.svg", { labels = { "x", "y", "z" } })
    assert_texts(read(path), fig)
    assert.equal(2, #fig.panels[1].bars) -- (no bar for the NaN)
    assert.matches("<svg", read(moe.plot.lines({ { name = "x", x = { 1, 2 }, y = { 3, 4 } } }, dir .. "/l.svg")))
  end)

  it("names what is wrong with its input, at the caller's line", function()
    local me = "plot_spec%.lua:%d+: "
    assert.matches(me .. ".*must end in %.svg or %.png", H.error_of(function() moe.plot.lines({ { y = { 1 } } }, dir .. "/x.jpg") end))
    assert.matches(me .. "plot%.lines: series 1 has 2 x values and 1 y values",
      H.error_of(function() moe.plot.lines({ { x = { 1, 2 }, y = { 1 } } }, dir .. "/x.svg") end))
    assert.matches(me .. "plot%.lines: series 1: y%[2%] must be a number, got \"2\" %(a string%)",
      H.error_of(function() moe.plot.lines({ { y = { 1, "2" } } }, dir .. "/x.svg") end))
    assert.matches(me .. "plot%.lines: series 1: err must be a list of numbers %(a spread per point%), got 0.1 %(a number%)",
      H.error_of(function() moe.plot.lines({ { y = { 1, 2 }, err = 0.1 } }, dir .. "/x.svg") end))
    assert.matches(me .. 'plot%.lines: errors must be "band" or "bars", got "whiskers" %(a string%)',
      H.error_of(function() moe.plot.lines({ { y = { 1 } } }, dir .. "/x.svg", { errors = "whiskers" }) end))
    assert.matches(me .. "plot%.history: expected the History that fit returns, got {} ", (
      H.error_of(function() moe.plot.history({}, dir .. "/x.svg") end):gsub("table: 0x%x+ %(a table%)", "{} ")))
    assert.matches(me .. "plot%.expert_utilisation: gates 1 must be %[B, E%]",
      H.error_of(function() moe.plot.expert_utilisation({ moe.rand(3) }, dir .. "/x.svg") end))
    assert.matches(me .. "plot%.heatmap: row 2 has 1 values, row 1 has 2",
      H.error_of(function() moe.plot.heatmap({ { 1, 2 }, { 3 } }, dir .. "/x.svg") end))
    assert.matches(me .. "plot%.heatmap: row 1, column 2 must be a number, got true %(a boolean%)",
      H.error_of(function() moe.plot.heatmap({ { 1, true } }, dir .. "/x.svg") end))
    assert.matches(me .. "plot%.expert_utilisation: kind must be \"heatmap\" or \"bars\"",
      H.error_of(function() moe.plot.expert_utilisation({ { 0.5, 0.5 } }, dir .. "/x.svg", { kind = "pie" }) end))
    assert.matches(me .. "moe%.plot: cannot write",
      H.error_of(function() moe.plot.lines({ { y = { 1, 2 } } }, dir .. "/missing/x.png") end))
    assert.equal("", io.popen("ls " .. dir):read("*a")) -- nothing half-written left
  end)
end)

describe("moe.plot.panels and moe.plot.histograms", function()
  local dir
  before_each(function() dir = os.tmpname(); os.remove(dir); os.execute("mkdir -p " .. dir) end)
  after_each(function() os.execute("rm -rf " .. dir) end)

  it("panels draws each panel's series on its own axes, cols to a row, and no markers when asked", function()
    local s1 = { { name = "a", x = { 1, 2, 3 }, y = { 1, 4, 9 }, err = { 0.5, 0.5, 1 } } }
    local s2 = { { name = "b", x = { 1, 2 }, y = { 10, 20 } }, { name = "c", x = { 1, 2 }, y = { 5, 5 } } }
    local path, fig = moe.plot.panels({ { title = "one", series = s1 }, { title = "two", series = s2, ylabel = "y" },
      { title = "three", series = s1 } }, dir .. "/p.svg", { cols = 2, errors = "bars", markers = false,
      title = "all" })
    assert.equal(dir .. "/p.svg", path)
    assert.equal(3, #fig.panels)
    assert.equal(2 * 440, fig.width) -- two columns
    assert.equal(2 * 300 + 30, fig.height) -- two rows and the title
    local b1, b2, b3 = fig.panels[1].box, fig.panels[2].box, fig.panels[3].box
    assert.is_true(b2[1] > b1[1] + b1[3] and b2[2] == b1[2]) -- side by side
    assert.is_true(b3[1] == b1[1] and b3[2] > b1[2] + b1[4]) -- the third below the first
    assert.equal(3, #fig.panels[1].lines[1].errorbars)
    assert.equal(0, fig.panels[1].lines[1].markers)
    assert.equal(2, #fig.panels[2].lines)
    assert.same({ "one", "two", "three" }, { fig.panels[1].title, fig.panels[2].title, fig.panels[3].title })
    assert_texts(read(path), fig)
    local me = "plot_spec%.lua:%d+: "
    assert.matches(me .. "plot%.panels: expected a list of panels",
      H.error_of(function() moe.plot.panels({}, dir .. "/x.svg") end))
    assert.matches(me .. "plot%.panels: panel 2: series 1 has no y values",
      H.error_of(function() moe.plot.panels({ { series = s1 }, { series = { {} } } }, dir .. "/x.svg") end))
    assert.equal(nil, io.open(dir .. "/x.svg"))
  end)

  it("histograms counts each group's values per bin (a naive count) on bins shared by the panels", function()
    local g = {}
    local seed = 7
    local function rnd() seed = (seed * 1103515245 + 12345) % 2147483648; return seed / 2147483648 end
    for k = 1, 3 do
      g[k] = {}
      for i = 1, 50 + 10 * k do g[k][i] = rnd() * k + 0.5 * k end
    end
    g[3][#g[3] + 1] = 0 / 0 -- counted nowhere
    local path, fig = moe.plot.histograms({ { title = "p1", groups = { { name = "a", values = g[1] },
      { name = "b", values = g[2] } } }, { title = "p2", groups = { { name = "c", values = g[3] } } } },
      dir .. "/h.png", { bins = 8, xlabel = "loss" })
    assert.equal(dir .. "/h.png", path)
    local lo, hi = math.huge, -math.huge
    for k = 1, 3 do for _, v in ipairs(g[k]) do if v == v then lo, hi = math.min(lo, v), math.max(hi, v) end end end
    assert.is_near(lo, fig.bins.lo, 1e-12); assert.is_near(hi, fig.bins.hi, 1e-12)
    local w = (hi - lo) / 8
    local function naive(vals)
      local c = { 0, 0, 0, 0, 0, 0, 0, 0 }
      for _, v in ipairs(vals) do
        if v == v then
          for b = 1, 8 do
            local a, e = lo + (b - 1) * w, lo + b * w
            if (v >= a and v < e) or (b == 8 and v >= a) then c[b] = c[b] + 1; break end
          end
        end
      end
      return c
    end
    assert.same(naive(g[1]), fig.bins.counts[1][1])
    assert.same(naive(g[2]), fig.bins.counts[1][2])
    assert.same(naive(g[3]), fig.bins.counts[2][1])
    local total = 0
    for _, c in ipairs(fig.bins.counts[2][1]) do total = total + c end
    assert.equal(#g[3] - 1, total)
    -- the outline: one segment of 2 points per bin edge, up to each count and across
    local seg = fig.panels[1].lines[1].segments[1]
    assert.equal(2 + 2 * 8, #seg)
    assert.equal(0, fig.panels[1].lines[1].markers)
    assert.matches("plot_spec%.lua:%d+: plot%.histograms: bins must be a positive integer, got 0",
      H.error_of(function() moe.plot.histograms({ { groups = { { values = { 1 } } } } }, dir .. "/x.svg", { bins = 0 }) end))
    assert.matches("plot_spec%.lua:%d+: plot%.histograms: panel 1, group 1: value 2 must be a number, got \"x\" %(a string%)",
      H.error_of(function() moe.plot.histograms({ { groups = { { values = { 1, "x" } } } } }, dir .. "/x.svg") end))
    assert.matches("plot_spec%.lua:%d+: plot%.histograms: range must be {lo, hi} with lo < hi, got",
      H.error_of(function() moe.plot.histograms({ { groups = { { values = { 1 } } } } }, dir .. "/x.svg", { range = { 2, 1 } }) end))
    assert.matches("plot_spec%.lua:%d+: plot%.panels: cols must be a positive integer, got 0",
      H.error_of(function() moe.plot.panels({ { series = { { y = { 1 } } } } }, dir .. "/x.svg", { cols = 0 }) end))
    assert.is_nil(io.open(dir .. "/x.svg"))
  end)
end)

describe("the model scripts' pictures", function()
  local dir
  before_each(function() dir = os.tmpname(); os.remove(dir) end)
  after_each(function() os.execute("rm -rf " .. dir) end)

  it("moe_vs_mmoe draws figure 4: each model's mean curve over runs with error bars of one standard error", function()
    local out = run(bin .. " run models/moe_vs_mmoe.lua --quick --out " .. dir .. "/c")
    assert.matches("wrote ", out)
    -- the curves CSV: loss per (model, correlation, run, step)
    local by = {}
    for line in io.lines(dir .. "/c_curves.csv") do
      local model, corr, _, step, loss = line:match("^([%w_]+),([%d.]+),(%d+),(%d+),([%d.]+)$")
      if model then
        local k = model .. "@" .. corr .. "@" .. step
        by[k] = by[k] or {}
        table.insert(by[k], tonumber(loss))
      end
    end
    local function mean_se(l)
      local m = 0
      for _, v in ipairs(l) do m = m + v end
      m = m / #l
      local v = 0
      for _, x in ipairs(l) do v = v + (x - m) ^ 2 end
      return m, math.sqrt(v / (#l - 1) / #l)
    end
    local paths = svg_paths(read(dir .. "/c.svg"))
    -- --quick: 200 steps, a point every 10, drawn from step 20; correlations 0.5 and 1.0
    local steps = {}
    for st = 20, 200, 10 do steps[#steps + 1] = st end
    for i, model in ipairs { "shared_bottom", "one_gate_moe", "multi_gate_moe" } do
      local bars = strokes(paths, PALETTE[i], "1.5")
      assert.equal(2 * #steps, #bars, model) -- a bar per point, in both panels
      local lines = strokes(paths, PALETTE[i])
      assert.equal(2, #lines, model)
      for p, corr in ipairs { "0.5", "1" } do
        local line = lines[p].subpaths[1]
        assert.equal(#steps, #line)
        local h1, se1
        for k, st in ipairs(steps) do
          local m, se = mean_se(by[model .. "@" .. corr .. "@" .. st])
          local bar = bars[(p - 1) * #steps + k].subpaths[1] -- (the vertical stroke: mean - se to mean + se)
          assert.is_near(line[k][1], bar[1][1], PX)
          assert.is_near(line[k][2], (bar[1][2] + bar[2][2]) / 2, 2 * PX) -- centred on the mean
          local h = math.abs(bar[1][2] - bar[2][2])
          if k == 1 then h1, se1 = h, se
          elseif se1 > 1e-5 and h1 > 1 then assert.is_near(se / se1, h / h1, 1e-2 * se / se1 + 2 / h1) end
          if k > 1 then -- the means are the line's: its slope between points follows theirs
            local mp = mean_se(by[model .. "@" .. corr .. "@" .. steps[k - 1]])
            assert.is_true((m - mp) * (line[k - 1][2] - line[k][2]) >= -1e-9, model .. " step " .. st)
          end
        end
      end
    end
    assert.equal("\137PNG", read(dir .. "/c_hist.png"):sub(1, 4))
    assert.matches("<svg", read(dir .. "/c_final.svg"))
  end)

  it("mmoe_census draws validation beside training for the loss too, and a tasks x experts heatmap", function()
    local out = run(bin .. " run models/mmoe_census.lua --smoke --plot " .. dir)
    assert.matches("wrote .*mmoe_census_curves%.svg", out)
    local curves = svg_paths(read(dir .. "/mmoe_census_curves.svg"))
    -- one epoch: a marker per series per panel; validation (orange) in all three: loss and both AUCs
    local markers = 0
    for _, p in ipairs(fills(curves, PALETTE[2], 1)) do
      if #p.subpaths[1] == 3 then markers = markers + 1 end -- (a circle: a move and two arcs)
    end
    assert.equal(3, markers)
    -- the experts: 2 tasks x 8 experts of cells, shaded from the colour map (not the palette's bars)
    local svg = read(dir .. "/mmoe_census_experts.svg")
    local cells = 0
    for _, p in ipairs(svg_paths(svg)) do
      local sp = p.subpaths[1]
      if p.style.fill and #sp == 4 and math.abs((sp[2][1] - sp[1][1]) - 63) < PX then cells = cells + 1 end
    end
    assert.equal(16, cells)
  end)

  it("switch_moe --plot draws each router's expert load over the epochs", function()
    local out = run(bin .. " run models/switch_moe.lua --smoke --router tokens --plot " .. dir)
    assert.matches("wrote .*experts_tokens%.svg", out)
    local svg = read(dir .. "/experts_tokens.svg")
    -- 8 experts x 1 epoch of cells (64 pixels wide, less the white line)
    local cells = 0
    for _, p in ipairs(svg_paths(svg)) do
      local sp = p.subpaths[1]
      if p.style.fill and #sp == 4 and math.abs((sp[2][1] - sp[1][1]) - 63) < PX then cells = cells + 1 end
    end
    assert.equal(8, cells)
  end)
end)
