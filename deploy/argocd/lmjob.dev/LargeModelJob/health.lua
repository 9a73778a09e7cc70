-- Argo CD health check for lmjob.dev/LargeModelJob (Lua 5.1, as embedded by Argo CD).
-- A training job is Progressing while it works, Healthy once it succeeded, Degraded when it
-- failed and Suspended while suspended (pods removed, checkpoints kept).
local hs = {}

local function count(value)
  if value == nil then
    return "0"
  end
  return string.format("%d", math.floor(value))
end

local function find_condition(conditions, type_)
  if conditions == nil then
    return nil
  end
  for _, condition in ipairs(conditions) do
    if condition.type == type_ then
      return condition
    end
  end
  return nil
end

-- The message (else reason) of condition `type_` when its status is `want` ("True" unless
-- given), else `fallback`.
local function condition_message(status, type_, fallback, want)
  local condition = find_condition(status.conditions, type_)
  if condition ~= nil and condition.status == (want or "True") then
    if condition.message ~= nil and condition.message ~= "" then
      return condition.message
    end
    if condition.reason ~= nil and condition.reason ~= "" then
      return condition.reason
    end
  end
  return fallback
end

-- "stage train, step 1200/2000, loss 1.52, workers 4/4"
local function progress_summary(status)
  local parts = {}
  local progress = status.progress
  if progress ~= nil and progress.stage ~= nil and progress.stage ~= "" then
    table.insert(parts, "stage " .. progress.stage)
    if progress.totalSteps ~= nil and progress.totalSteps > 0 then
      table.insert(parts, "step " .. count(progress.step) .. "/" .. count(progress.totalSteps))
    end
    if progress.loss ~= nil then
      table.insert(parts, string.format("loss %.4g", progress.loss))
    end
  end
  if status.workers ~= nil and status.workers.desired ~= nil then
    table.insert(parts, "workers " .. count(status.workers.active) .. "/" .. count(status.workers.desired))
  end
  return table.concat(parts, ", ")
end

local function with_summary(prefix, status)
  local summary = progress_summary(status)
  if summary == "" then
    return prefix
  end
  return prefix .. ": " .. summary
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
  hs.message = condition_message(status, "Failed", "Failed")
  return hs
end

if phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = condition_message(status, "Suspended", "Suspended: worker pods removed, checkpoints kept")
  return hs
end

if phase ~= "Pending" and phase ~= "Running" and phase ~= "Restarting" and phase ~= "Compressing" then
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. phase
  return hs
end

-- A failure the operator has already reported, before the phase says so.
for _, type_ in ipairs({"Failed", "Stalled", "Degraded"}) do
  local condition = find_condition(status.conditions, type_)
  if condition ~= nil and condition.status == "True" then
    hs.status = "Degraded"
    hs.message = condition_message(status, type_, type_)
    return hs
  end
end

-- A spec change the operator has not acted on yet (e.g. a resize).
local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to act on generation " .. count(generation)
  return hs
end

hs.status = "Progressing"
if phase == "Pending" then
  -- The operator says why in the Running condition, e.g. "1 of 4 workers running (at least 2 needed)".
  local why = condition_message(status, "Running", nil, "False")
  if why ~= nil then
    hs.message = "Pending: " .. why
  else
    hs.message = with_summary("Pending", status)
  end
elseif phase == "Restarting" then
  local prefix = "Restarting (restart " .. count(status.restarts) .. ")"
  local reason = condition_message(status, "Restarting", nil)
  if reason ~= nil then
    prefix = prefix .. ": " .. reason
  end
  hs.message = prefix
else
  hs.message = with_summary(phase, status)
end
return hs
