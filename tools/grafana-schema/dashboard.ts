// The dashboards' type: Grafana's own dashboard schema (@grafana/schema) with each panel's options and field
// config typed by its panel plugin's schema, and Prometheus queries typed by the fields Grafana's Prometheus data
// source reads (the core schema leaves data-source queries open). tests/observability wraps each
// deploy/grafana/dashboards/*.json as `export const dashboard: GatewayDashboard = <json>;` and runs tsc: an unknown
// key, a wrong type or an unknown enum value anywhere is an error.
import type { AnnotationQuery, Dashboard, DataQuery, FieldConfigSource, Panel, RowPanel } from '@grafana/schema';
import type * as stat from '@grafana/schema/dist/esm/raw/composable/stat/panelcfg/x/StatPanelCfg_types.gen';
import type * as table from '@grafana/schema/dist/esm/raw/composable/table/panelcfg/x/TablePanelCfg_types.gen';
import type * as text from '@grafana/schema/dist/esm/raw/composable/text/panelcfg/x/TextPanelCfg_types.gen';
import type * as timeseries from '@grafana/schema/dist/esm/raw/composable/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen';

// JSON holds an enum's values, not its names: turn every string enum into the union of its values.
type Loose<T> = T extends string
  ? `${T}`
  : T extends number | boolean | null | undefined
    ? T
    : T extends (infer U)[]
      ? Loose<U>[]
      : T extends object
        ? { [K in keyof T]: Loose<T[K]> }
        : T;

export type PromQuery = Loose<DataQuery> & {
  expr: string;
  legendFormat?: string;
  instant?: boolean;
  range?: boolean;
  exemplar?: boolean;
  format?: 'time_series' | 'table' | 'heatmap';
  interval?: string;
  editorMode?: 'code' | 'builder';
};

type Typed<Type extends string, Options, Custom> = Loose<Omit<Panel, 'type' | 'options' | 'fieldConfig' | 'targets'>> & {
  type: Type;
  options: Loose<Options>;
  fieldConfig: Loose<FieldConfigSource<Custom>>;
  targets: PromQuery[];
};

export type GatewayPanel =
  | Typed<'timeseries', timeseries.Options, timeseries.FieldConfig>
  | Typed<'stat', stat.Options, Record<string, never>>
  | Typed<'table', table.Options, table.FieldConfig>
  | Typed<'text', text.Options, Record<string, never>>
  | (Loose<Omit<RowPanel, 'panels'>> & { panels: GatewayPanel[] });

// Prometheus annotations: Grafana's Prometheus data source reads these beside the query.
type PromAnnotation = Loose<Omit<AnnotationQuery, 'target'>> & {
  target?: PromQuery;
  titleFormat?: string;
  textFormat?: string;
  tagKeys?: string;
  useValueForTime?: boolean;
  step?: string;
};

export type GatewayDashboard = Loose<Omit<Dashboard, 'panels' | 'annotations'>> & {
  panels: GatewayPanel[];
  annotations: { list: PromAnnotation[] };
};
