package cluster

import "github.com/redis/go-redis/v9"

// Redis layout, all under one hash tag "{P}" (P = Options.Prefix):
//
//	{P}:inst               zset: instance → expiry (Redis ms)
//	{P}:link:NAME          hash: instance → JSON lease entry; "_born" → ms the state began
//	{P}:ctr:NAME:h:WID     hash: key → hits in window WID (all instances)
//	{P}:ctr:NAME:c:INST    hash: key → open connections of one instance
//	{P}:ban:POLICY         zset: key → ban end (Redis ms)
//	{P}:ban:POLICY         also the pub/sub channel of the policy's bans

// tickScript renews every lease of one instance and flushes its counters,
// atomically, on Redis's clock. KEYS[1] = {P}:inst; ARGV[1] = "{P}";
// ARGV[2] = the request, JSON (see tickRequest). It returns the reply,
// JSON (see tickReply).
var tickScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local P = ARGV[1]
local req = cjson.decode(ARGV[2])
if req.dl > 0 and now > req.dl then
  return cjson.encode({now = now, late = true})
end
local id, ttl, hold, floor = req.id, req.ttl, req.hold, req.floor
redis.call('ZADD', KEYS[1], now + ttl, id)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], ttl * 10)
local res = {now = now, links = {}, ctrs = {}}

-- fill returns the max-min fair split of line over the entries: each gets
-- the floor, and the rest is water-filled by weight (w) up to each one's
-- want (0: no bound); what nobody wants is spread evenly.
local function fill(ents, line)
  local n = 0
  for _ in pairs(ents) do n = n + 1 end
  local fl = math.min(line * floor, line / n)
  local rest = line - fl * n
  local out, act, wsum = {}, {}, 0
  for f, e in pairs(ents) do
    out[f] = fl
    if e.w > 0 then
      local cap = math.huge
      if e.want > 0 then cap = math.max(0, e.want - fl) end
      act[#act + 1] = {f = f, w = e.w, cap = cap}
      wsum = wsum + e.w
    end
  end
  table.sort(act, function(a, b) return a.cap / a.w < b.cap / b.w end)
  for i, a in ipairs(act) do
    local fair = rest * a.w / wsum
    if a.cap <= fair then
      out[a.f] = out[a.f] + a.cap
      rest, wsum = rest - a.cap, wsum - a.w
    else
      for j = i, #act do
        local b = act[j]
        out[b.f] = out[b.f] + rest * b.w / wsum
      end
      rest = 0
      break
    end
  end
  for f in pairs(out) do
    out[f] = math.floor(out[f] + rest / n)
  end
  return out, n
end

for _, l in ipairs(req.links) do
  local key = P .. ':link:' .. l.n
  local raw = redis.call('HGETALL', key)
  local ents, born = {}, nil
  for i = 1, #raw, 2 do
    local f, v = raw[i], raw[i + 1]
    if f == '_born' then
      born = tonumber(v)
    else
      local e = cjson.decode(v)
      if e.exp <= now then
        redis.call('HDEL', key, f)
      else
        ents[f] = e
      end
    end
  end
  if l.bye then
    redis.call('HDEL', key, id)
  else
    if not born then
      born = now
      redis.call('HSET', key, '_born', now)
    end
    local me = ents[id] or {told = 0, at = 0}
    me.w, me.want, me.have, me.line, me.exp = l.w, l.want, l.have, l.line, now + ttl
    ents[id] = me
    local line = l.line
    for _, e in pairs(ents) do
      if e.line < line then line = e.line end
    end
    local target, n = fill(ents, line)
    -- What the others may be using now: what they were told, or, while
    -- their reply may still be on its way, what they had before.
    local used, wsum = 0, 0
    for f, e in pairs(ents) do
      wsum = wsum + e.w
      if f ~= id then
        local c = e.told
        if now < e.at + hold and e.have > c then c = e.have end
        used = used + c
      end
    end
    local share = math.min(target[id], line - used)
    if now < born + ttl then
      -- The state is new (first use, or Redis restarted): others may be
      -- spending shares Redis has not heard of yet, so nobody grows.
      share = math.min(share, math.max(me.have, me.told))
    end
    share = math.max(1, math.floor(share))
    me.told, me.at = share, now
    redis.call('HSET', key, id, cjson.encode(me))
    redis.call('PEXPIRE', key, ttl * 10)
    res.links[#res.links + 1] = {n = l.n, share = share, fair = target[id], inst = n, w = wsum, line = line}
  end
end

if #req.ctrs > 0 then
  local live = redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
  for _, c in ipairs(req.ctrs) do
    local wid = math.floor(now / c.win)
    local base = P .. ':ctr:' .. c.n
    local hk = base .. ':h:' .. wid
    local mine = base .. ':c:' .. id
    local out = {}
    for i, k in ipairs(c.keys) do
      local total
      if k.h > 0 then
        total = redis.call('HINCRBY', hk, k.k, k.h)
      else
        total = tonumber(redis.call('HGET', hk, k.k) or '0')
      end
      if k.c > 0 then
        redis.call('HSET', mine, k.k, k.c)
      else
        redis.call('HDEL', mine, k.k)
      end
      local others = 0
      for _, o in ipairs(live) do
        if o ~= id then
          others = others + tonumber(redis.call('HGET', base .. ':c:' .. o, k.k) or '0')
        end
      end
      out[i] = {total, others}
    end
    if redis.call('EXISTS', hk) == 1 then
      redis.call('PEXPIRE', hk, c.win * 2 + ttl)
    end
    if redis.call('EXISTS', mine) == 1 then
      redis.call('PEXPIRE', mine, ttl)
    end
    res.ctrs[#res.ctrs + 1] = {n = c.n, wid = wid, v = out}
  end
end
return cjson.encode(res)
`)

// banScript records bans and lifts of one policy and publishes them.
// KEYS[1] = {P}:ban:POLICY (the set and the channel); ARGV[1] = the
// instance; ARGV[2..] = triples key, op ("b" ban, "l" lift), milliseconds
// left (ban). A ban only ever lengthens an existing one.
var banScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local msg = {i = ARGV[1], b = {}}
local maxms = 0
for j = 2, #ARGV, 3 do
  local k, op, ms = ARGV[j], ARGV[j + 1], tonumber(ARGV[j + 2])
  if op == 'l' then
    redis.call('ZREM', KEYS[1], k)
  else
    redis.call('ZADD', KEYS[1], 'GT', now + ms, k)
    if ms > maxms then maxms = ms end
  end
  msg.b[#msg.b + 1] = {k, op, ms}
end
local left = redis.call('PTTL', KEYS[1])
if maxms > 0 and (left == -1 or (left >= 0 and left < maxms)) then
  redis.call('PEXPIRE', KEYS[1], maxms)
end
redis.call('PUBLISH', KEYS[1], cjson.encode(msg))
return 1
`)

// banReadScript returns the live bans of a policy as a flat list of key,
// milliseconds left. KEYS[1] = {P}:ban:POLICY.
var banReadScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local r = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES')
for i = 2, #r, 2 do
  r[i] = tostring(tonumber(r[i]) - now)
end
return r
`)
