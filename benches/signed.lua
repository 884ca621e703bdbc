-- wrk script: POSTs pre-signed callbacks, each body once (fresh nonce per request), so the
-- daemon does the whole job (signature, replay table, routing, store) on every request.
-- Usage: wrk -s benches/signed.lua URL -- BODIES_FILE THREADS
-- BODIES_FILE holds fixed-width records: each body padded with spaces (JSON allows trailing
-- whitespace) to the same length and ended by "\n". A thread reads it in one go and cuts its
-- bodies out as it sends them (splitting 600 000 lines into Lua strings took each thread about
-- 2.5 s).
-- Prints "wrapped" at the end if a thread ran out of bodies and started over: then some were
-- sent twice, and the daemon answered those as duplicates (less work than a fresh callback).
local threads = {}
local next_id = 0
function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  threads[#threads + 1] = thread
end

function init(args)
  path = args[1]
  step = tonumber(args[2])
  counter = id
  headers = { ["Content-Type"] = "application/json" }
end

-- The bodies are read at a thread's first request, not in init: wrk sets its threads up and
-- starts each one by one and starts its clock after the last, so whatever one thread does in
-- init, the threads started before it load the server outside the clock (and requests/s counts
-- those requests). Read here, it takes the time of the thread's own run (the first thread reads
-- when wrk tries its request() out, before any thread runs).
local function load()
  local file = assert(io.open(path, "rb"))
  data = file:read("*a")
  file:close()
  width = assert(data:find("\n", 1, true), "no record in " .. path)
  nbodies = math.floor(#data / width)
end

function request()
  if not data then
    load()
  end
  local at = (counter % nbodies) * width
  counter = counter + step
  return wrk.format("POST", nil, headers, data:sub(at + 1, at + width - 1))
end

function done(summary, latency, requests)
  for _, t in ipairs(threads) do
    -- the last index this thread used is counter - step
    local nbodies = t:get("nbodies")
    if nbodies and t:get("counter") - t:get("step") >= nbodies then
      io.write("wrapped\n")
      return
    end
  end
end
