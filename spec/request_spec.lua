-- Request validation: before any I/O, naming the field, with hints.
local H = require "spec.helper"
local mock = H.mock

describe("request validation", function()
  local client
  H.with_mock(setup, teardown, function(c) client = c end)

  local cases = {
    { {}, "callID", "'callID' is required" },
    { { callID = "" }, "callID", "'callID' must not be empty" },
    { { callId = "1" }, "callId", "unknown request field 'callId' %(did you mean callID%?%)" },
    { { callID = "1", worknumber = "7" }, "worknumber", "unknown request field 'worknumber'$" },
    { { callID = "1", beginTime = "2025053012000" }, "beginTime", "yyyyMMddHHmmss" },
    { { callID = "1", beginTime = "20250230120000" }, "beginTime", "real date%-time" },
    { { callID = "1", beginTime = "20250530126000" }, "beginTime", "real date%-time" },
    { { callID = "1", workNo = 1.5 }, "workNo", "must be a string or an integer, got a non%-integer number" },
    { { callID = "1", workNo = true }, "workNo", "must be a string or an integer, got boolean" },
    { { callID = "1", callerNo = "\255\254" }, "callerNo", "not valid UTF%-8" },
    { { callID = "1\r\nX-Injected: 1" }, "callID", "control character" },
    { { callID = ("9"):rep(300) }, "callID", "too long" },
    { { [1] = "x", callID = "1" }, "request", "request keys must be field names" },
  }

  for i, case in ipairs(cases) do
    local req, field, pattern = case[1], case[2], case[3]
    if field then
      it(("rejects case %d (%s) before any I/O"):format(i, field), function()
        mock.reset()
        local data, err = client:download(req)
        assert.is_nil(data)
        assert.equal("invalid", err.kind)
        assert.equal(field, err.field)
        assert.matches(pattern, err.message)
        assert.is_false(err.retryable)
        assert.matches("^cmsrec: .+ %(invalid error%)$", tostring(err))
        assert.equal(0, mock.stats().requests, "a request reached the network")
      end)
    end
  end

  it("accepts integers and sends them as strings", function()
    mock.reset()
    -- 1001.0 is what lua-cjson gives for the JSON number 1001
    local _, err = client:download{ callID = 1748587841, beginTime = 20250530120000, workNo = 1001.0 }
    assert.equal("api", err.kind) -- the mock has no such recording; validation passed
    assert.matches('"callID":"1748587841","workNo":"1001","beginTime":"20250530120000"',
      mock.stats().last.body)
  end)

  it("raises for a request that is not a table (a programming error)", function()
    assert.has_error(function() client:download("1748587841-77268") end)
    assert.has_error(function() client:download({ callID = "1" }, "extra") end)
  end)
end)
