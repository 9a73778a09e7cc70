-- Argo CD health check for lmjob.dev/LargeModelSweep (Lua 5.1, as embedded by Argo CD).
-- A sweep is Progressing while its trials run, Healthy once every trial finished, Degraded
-- when it failed (an invalid spec, or more failed trials than maxFailedTrials).
local hs = {}

local function condition_message(status, type_, fallback)
  if status.conditions ~= nil then
    for _, condition in ipairs(status.conditions) do
      if condition.type == type_ and condition.status == "True" then
        if condition.message ~= nil and condition.message ~= "" then
          return condition.message
        end
        if condition.reason ~= nil and condition.reason ~= "" then
          return condition.reason
        end
      end
    end
  end
  return fallback
end

-- "trials 7/20, 3 pruned, best 1.812 (lr-4)"
local function summary(status)
  local parts = {}
  if status.summary ~= nil and status.summary ~= "" then
    table.insert(parts, "trials " .. status.summary)
  end
  if status.pruned ~= nil and status.pruned > 0 then
    table.insert(parts, string.format("%d pruned", status.pruned))
  end
  if status.best ~= nil and status.best.value ~= nil then
    table.insert(parts, string.format("best %.4g (%s)", status.best.value, status.best.name or "?"))
  end
  return table.concat(parts, ", ")
end

local status = obj.status
if status == nil or status.phase == nil or status.phase == "" then
  hs.status = "Progressing"
  hs.message = "Waiting for the lmjob operator to report status"
  return hs
end

local phase = status.phase
if phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = condition_message(status, "Succeeded", "Succeeded")
  return hs
end
if phase == "Failed" then
  hs.status = "Degraded"
  hs.message = condition_message(status, "Invalid", nil) or condition_message(status, "Failed", "Failed")
  return hs
end
if phase ~= "Pending" and phase ~= "Running" then
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. phase
  return hs
end
hs.status = "Progressing"
local text = summary(status)
if text == "" then
  hs.message = phase
else
  hs.message = phase .. ": " .. text
end
return hs
