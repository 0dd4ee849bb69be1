import { LRUCache } from "lru-cache";

/**
 * An LRU cache of at most `max` entries that takes memory as it fills: lru-cache's own `max`
 * allocates room for every entry up front (about 6 MiB across our caches before the first request),
 * its `maxSize` with a size of 1 per entry bounds the count the same way without that.
 */
export function lruCache<K extends {}, V extends {}>(max: number, ttlMs?: number): LRUCache<K, V> {
  return new LRUCache<K, V>({ maxSize: max, sizeCalculation: () => 1, ...(ttlMs === undefined ? {} : { ttl: ttlMs }) });
}
