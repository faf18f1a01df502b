/** The service's top-level folders (scripts/service-rooms.mjs). */
export function serviceRooms (root: string): Promise<string[]>
