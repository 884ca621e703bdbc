-- wrk script: POSTs pre-signed callbacks, each body once (fresh nonce per request), so the
-- daemon does the whole job (signature, replay table, routing, store) on every request.
-- Usage: wrk -s benches/signed.lua URL -- BODIES_FILE THREADS
local next_id = 0
function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
end

function init(args)
  bodies = {}
  for line in io.lines(args[1]) do
    bodies[#bodies + 1] = line
  end
  step = tonumber(args[2])
  counter = id
  headers = { ["Content-Type"] = "application/json" }
end

function request()
  local body = bodies[(counter % #bodies) + 1]
  counter = counter + step
  return wrk.format("POST", nil, headers, body)
end
