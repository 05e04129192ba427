"""Quotas shared by every gateway process through Redis.

The same sliding log as `window.Window`, kept in Redis and updated by Lua scripts so that a
check-and-reserve is atomic across processes. Time comes from the Redis server (`TIME`), so
gateways with skewed clocks still agree. Per target: a sorted set of reservation ids scored
by admission time, a hash of their token counts, and a running total.
"""

from __future__ import annotations

from typing import Any

from lmfoundry.errors import Unavailable
from lmfoundry.quotas.window import (
    CLAIM_SLACK_SECONDS,
    EPSILON,
    PROMISE_GRACE_SECONDS,
    WINDOW_SECONDS,
    Decision,
    Limits,
)

_PRELUDE = """
local z, h, t, pz, ph = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local window = tonumber(ARGV[1])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local old = redis.call('ZRANGEBYSCORE', z, '-inf', now - window)
if #old > 0 then
  local freed = 0
  local values = redis.call('HMGET', h, unpack(old))
  for _, v in ipairs(values) do
    if v then freed = freed + tonumber(v) end
  end
  redis.call('ZREMRANGEBYSCORE', z, '-inf', now - window)
  redis.call('HDEL', h, unpack(old))
  redis.call('DECRBY', t, freed)
end
local used_tokens = tonumber(redis.call('GET', t) or '0')
local used_requests = redis.call('ZCARD', z)
"""

# Same algorithm as `Window.reserve`; see window.py for the reasoning.
RESERVE = (
    _PRELUDE
    + """
local id, tokens = ARGV[2], tonumber(ARGV[3])
local tpm, rpm = tonumber(ARGV[4]), tonumber(ARGV[5])
local claim, grace, eps = ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8])

local promises = {}
local listed = redis.call('ZRANGE', pz, 0, -1, 'WITHSCORES')
for i = 1, #listed, 2 do
  local pid = listed[i]
  local raw = redis.call('HGET', ph, pid) or '0|0|'
  local sep1 = string.find(raw, '|', 1, true)
  local sep2 = string.find(raw, '|', sep1 + 1, true)
  local p = {id = pid, at = tonumber(listed[i + 1]),
             tokens = tonumber(string.sub(raw, 1, sep1 - 1)),
             expires = tonumber(string.sub(raw, sep1 + 1, sep2 - 1)),
             claim = string.sub(raw, sep2 + 1)}
  if p.expires < now then
    redis.call('ZREM', pz, pid)
    redis.call('HDEL', ph, pid)
  else
    table.insert(promises, p)
  end
end

local claimed = nil
for _, p in ipairs(promises) do
  if p.at > now + 2 * eps then break end
  if p.claim == claim then claimed = p break end
end

local entries = nil
local function load_entries()
  if entries then return entries end
  entries = {}
  local listed_entries = redis.call('ZRANGE', z, 0, -1, 'WITHSCORES')
  for i = 1, #listed_entries, 2 do
    table.insert(entries, {at = tonumber(listed_entries[i + 1]),
                           tokens = tonumber(redis.call('HGET', h, listed_entries[i]) or '0')})
  end
  return entries
end

local function reason()
  if used_requests + 1 > rpm then return rpm .. ' requests per minute' end
  if used_tokens + tokens > tpm then return tpm .. ' tokens per minute' end
  return 'requests waiting ahead of this one'
end

local fits = used_requests + 1 <= rpm and used_tokens + tokens <= tpm
if fits then
  for _, p in ipairs(promises) do
    if p ~= claimed then
      local at = math.max(p.at, now)
      if at >= now + window then break end
      local low = at - window
      local count, used = 1, tokens
      for _, e in ipairs(load_entries()) do
        if e.at > low then count = count + 1 used = used + e.tokens end
      end
      for _, q in ipairs(promises) do
        if q ~= claimed and q.at > low and q.at <= at then
          count = count + 1 used = used + q.tokens
        end
      end
      if count > rpm or used > tpm then fits = false break end
    end
  end
end

local ttl = math.ceil(window * 2 + grace)
if fits then
  if claimed then
    redis.call('ZREM', pz, claimed.id)
    redis.call('HDEL', ph, claimed.id)
  end
  redis.call('ZADD', z, now, id)
  redis.call('HSET', h, id, tokens)
  redis.call('INCRBY', t, tokens)
  redis.call('EXPIRE', z, ttl)
  redis.call('EXPIRE', h, ttl)
  redis.call('EXPIRE', t, ttl)
  return {1, '0', math.max(0, tpm - used_tokens - tokens),
          math.max(0, rpm - used_requests - 1), ''}
end
if claimed then
  return {0, '1', math.max(0, tpm - used_tokens), math.max(0, rpm - used_requests), reason()}
end
if tokens > tpm then
  return {0, tostring(window), math.max(0, tpm - used_tokens),
          math.max(0, rpm - used_requests), reason()}
end
local log = {}
local total = 0
for _, e in ipairs(load_entries()) do table.insert(log, e) total = total + e.tokens end
for _, p in ipairs(promises) do table.insert(log, p) total = total + p.tokens end
local need = #log + 1 - rpm
local at = now
if #promises > 0 then at = promises[#promises].at end
local freed = 0
local slack = math.min(tonumber(ARGV[9]), window / 10)
local admitted = #log - #promises
for k, e in ipairs(log) do
  if k - 1 >= need and total - freed + tokens <= tpm then break end
  freed = freed + e.tokens
  if k > admitted then
    at = math.max(at, e.at + window + slack)
  else
    at = math.max(at, e.at + window + eps)
  end
end
redis.call('ZADD', pz, at, id)
redis.call('HSET', ph, id, tokens .. '|' .. (at + grace) .. '|' .. claim)
redis.call('EXPIRE', pz, ttl)
redis.call('EXPIRE', ph, ttl)
return {0, tostring(math.max(at - now, 0.001)), math.max(0, tpm - used_tokens),
        math.max(0, rpm - used_requests), reason()}
"""
)

SETTLE = """
local h, t = KEYS[2], KEYS[3]
local id, tokens = ARGV[1], tonumber(ARGV[2])
local reserved = redis.call('HGET', h, id)
if not reserved then return 0 end
reserved = tonumber(reserved)
local used = math.max(0, math.min(tokens, reserved))
redis.call('HSET', h, id, used)
redis.call('DECRBY', t, reserved - used)
return 1
"""

REMAINING = (
    _PRELUDE
    + """
return {math.max(0, tonumber(ARGV[2]) - used_tokens),
        math.max(0, tonumber(ARGV[3]) - used_requests)}
"""
)


class RedisQuotaStore:
    def __init__(
        self, url: str, prefix: str = "lmf:quota", window_seconds: float = WINDOW_SECONDS
    ) -> None:
        self.window_seconds = window_seconds
        import redis.asyncio as redis

        self._redis = redis.from_url(url)
        self._prefix = prefix
        self._reserve = self._redis.register_script(RESERVE)
        self._settle = self._redis.register_script(SETTLE)
        self._remaining = self._redis.register_script(REMAINING)

    def _keys(self, target: str) -> list[str]:
        base = f"{self._prefix}:{{{target}}}"  # one hash slot per target (Redis Cluster)
        return [f"{base}:z", f"{base}:h", f"{base}:t", f"{base}:pz", f"{base}:ph"]

    async def reserve(
        self, target: str, id: str, tokens: int, limits: Limits, claim: str = ""
    ) -> Decision:
        result: list[Any] = await self._reserve(
            keys=self._keys(target),
            args=[
                self.window_seconds,
                id,
                tokens,
                limits.tokens_per_minute,
                limits.requests_per_minute,
                claim,
                PROMISE_GRACE_SECONDS,
                EPSILON,
                CLAIM_SLACK_SECONDS,
            ],
        )
        allowed, wait, tokens_left, requests_left, reason = result
        return Decision(
            allowed=bool(allowed),
            reservation=id if allowed else None,
            remaining_tokens=int(tokens_left),
            remaining_requests=int(requests_left),
            retry_after=float(wait),
            reason=_text(reason),
        )

    async def settle(self, target: str, id: str, tokens: int) -> None:
        await self._settle(keys=self._keys(target), args=[id, tokens])

    async def remaining(self, target: str, limits: Limits) -> tuple[int, int]:
        tokens, requests = await self._remaining(
            keys=self._keys(target),
            args=[self.window_seconds, limits.tokens_per_minute, limits.requests_per_minute],
        )
        return int(tokens), int(requests)

    async def ping(self) -> None:
        from redis.exceptions import RedisError

        try:
            await self._redis.ping()
        except RedisError as exc:  # the URL may hold a password: name only the kind
            raise Unavailable(f"Redis does not answer ({type(exc).__name__}).") from None

    async def aclose(self) -> None:
        await self._redis.aclose()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
