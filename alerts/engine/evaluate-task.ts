// Piscina task: rule evaluation off the event loop (alerts/engine/alert-engine.ts sends batches).
import { evaluateTask } from './evaluate.ts'
export default evaluateTask
