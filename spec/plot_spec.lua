-- moe.plot: charts written as PNG and SVG files.
local moe = require "moe"
local H = require "helpers"

local read = H.read_file
-- width and height from a PNG's IHDR chunk
local function png_size(s)
  local function u32(i) local a, b, c, d = s:byte(i, i + 3); return ((a * 256 + b) * 256 + c) * 256 + d end
  return u32(17), u32(21)
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

  it("draws a quantity missing from some epochs (a layer metric, a stopped epoch) with gaps", function()
    local h = { epoch = { 1, 2, 3 }, history = { loss = { 0.5, 0.3, 0.2 }, router_z_loss = { [2] = 0.1, [3] = 0.05 },
      val_router_z_loss = { [3] = 0.07 } } }
    local w = png_size(read(moe.plot.history(h, dir .. "/gaps.png")))
    assert.equal(720, w)           -- loss and router_z_loss
    assert.matches("no values for 'nope'", H.error_of(moe.plot.history, h, dir .. "/x.png", { metrics = { "loss", "nope" } }))
    assert.equal("gaps.png\n", io.popen("ls " .. dir):read("*a")) -- the failed one left no file behind
  end)

  it("draws expert utilisation, bars and lines", function()
    local g = { moe.rand(20, 4):softmax(-1), moe.rand(20, 4):softmax(-1) }
    assert.equal("\137PNG", read(moe.plot.expert_utilisation(g, dir .. "/e.png", { task_names = { "a", "b" } })):sub(1, 4))
    assert.matches("<svg", read(moe.plot.tokens_per_expert(moe.tensor { 10, 20, 5 }, dir .. "/t.svg")))
    assert.matches("<svg", read(moe.plot.lines({ { name = "x", x = { 1, 2 }, y = { 3, 4 } } }, dir .. "/l.svg")))
  end)

  it("names what is wrong with its input", function()
    assert.matches("must end in %.svg or %.png", H.error_of(moe.plot.lines, { { y = { 1 } } }, dir .. "/x.jpg"))
    assert.matches("series 1 has 2 x values and 1 y values",
      H.error_of(moe.plot.lines, { { x = { 1, 2 }, y = { 1 } } }, dir .. "/x.svg"))
    assert.matches("History", H.error_of(moe.plot.history, {}, dir .. "/x.svg"))
    assert.matches("must be %[B, E%]", H.error_of(moe.plot.expert_utilisation, { moe.rand(3) }, dir .. "/x.svg"))
    assert.matches("cannot write", H.error_of(moe.plot.lines, { { y = { 1, 2 } } }, dir .. "/missing/x.png"))
  end)
end)
