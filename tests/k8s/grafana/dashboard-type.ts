// Type-checks a Grafana dashboard JSON against @grafana/schema (the tests write build/dashboard.ts
// that imports this file and checks the JSON literal with `satisfies DashboardJson`).
import type { Dashboard } from '@grafana/schema';

// JSON cannot spell TypeScript enum members, only their values: map every string enum to the
// union of its literal values (`${E}`), recursively, and keep every other type as strict as it is.
type Jsonify<T> = T extends string
  ? `${T}`
  : T extends number | boolean | null | undefined
    ? T
    : T extends ReadonlyArray<infer U>
      ? Array<Jsonify<U>>
      : T extends object
        ? { [K in keyof T]: Jsonify<T[K]> }
        : T;

export type DashboardJson = Jsonify<Dashboard>;
