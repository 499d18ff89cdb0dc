// Preact with htm: JSX-like templates without a build step.
import { h, render } from "../vendor/preact.module.js";
import htm from "../vendor/htm.module.js";

export const html = htm.bind(h);
export { render };
export {
  useState, useEffect, useRef, useCallback, useMemo, useLayoutEffect,
} from "../vendor/preact-hooks.module.js";
