//! The query of a row-targeted change (step 2 in `rowchange.rs`), built as a syntax tree from
//! the statement's own nodes: its table references, join condition, `WHERE` and value
//! expressions are moved into a `SELECT` over the tagged target, which DataFusion's SQL planner
//! then plans like any query. Nothing is printed and parsed again, so every name and expression
//! means what it meant in the statement.

use crate::dml::object_name;
use crate::error::{DirkError, Result};
use crate::kernels::rowchange::{Action, ACTION, TAG_COLUMNS};
use arrow::datatypes::{Field, Schema};
use datafusion::sql::sqlparser::ast::helpers::attached_token::AttachedToken;
use datafusion::sql::sqlparser::ast::{self, Expr, Ident};
use std::collections::HashMap;

/// The query of a row-targeted change and how to read its answer.
#[derive(Debug)]
pub(crate) struct ChangeQuery {
    /// `SELECT` chunk, batch, row, action, then one value column per entry of `columns`.
    pub(crate) query: ast::Query,
    /// The target column each value column is for.
    pub(crate) columns: Vec<usize>,
    /// The value columns (indices into `columns`) an update writes.
    pub(crate) updated: Vec<usize>,
    /// A target row the statement deletes more than once is deleted once (`DELETE ... USING`
    /// may join a row to several others); otherwise a row changed twice is an error.
    pub(crate) dedupe_deletes: bool,
}

fn unsupported(what: impl Into<String>) -> DirkError {
    DirkError::Unsupported { what: what.into() }
}

/// An identifier that names exactly `name`.
fn exact(name: &str) -> Ident {
    Ident::with_quote('"', name)
}

fn number(n: i64) -> Expr {
    Expr::value(ast::Value::Number(n.to_string(), false))
}

fn null() -> Expr {
    Expr::value(ast::Value::Null)
}

fn and(left: Expr, right: Expr) -> Expr {
    Expr::BinaryOp {
        left: Box::new(left),
        op: ast::BinaryOperator::And,
        right: Box::new(Expr::Nested(Box::new(right))),
    }
}

fn not(e: Expr) -> Expr {
    Expr::UnaryOp {
        op: ast::UnaryOperator::Not,
        expr: Box::new(Expr::Nested(Box::new(e))),
    }
}

/// `relation.column IS NOT NULL`.
fn has_row(relation: &Ident, column: &str) -> Expr {
    Expr::IsNotNull(Box::new(Expr::CompoundIdentifier(vec![
        relation.clone(),
        exact(column),
    ])))
}

/// `CASE WHEN c1 THEN r1 ... ELSE otherwise END`.
fn case(arms: Vec<(Expr, Expr)>, otherwise: Expr) -> Expr {
    Expr::Case {
        case_token: AttachedToken::empty(),
        end_token: AttachedToken::empty(),
        operand: None,
        conditions: arms
            .into_iter()
            .map(|(condition, result)| ast::CaseWhen { condition, result })
            .collect(),
        else_result: Some(Box::new(otherwise)),
    }
}

/// `value` cast to the type of target column `field`, as the statement's planner casts
/// assignments (an invalid cast is an error, not a NULL): `arrow_cast(value, 'type')`, which
/// names every Arrow type exactly.
fn cast_to(value: Expr, field: &Field) -> Expr {
    let args = [
        Expr::Nested(Box::new(value)),
        Expr::value(ast::Value::SingleQuotedString(
            field.data_type().to_string(),
        )),
    ];
    Expr::Function(ast::Function {
        name: ast::ObjectName::from(vec![Ident::new("arrow_cast")]),
        uses_odbc_syntax: false,
        parameters: ast::FunctionArguments::None,
        args: ast::FunctionArguments::List(ast::FunctionArgumentList {
            duplicate_treatment: None,
            args: args
                .into_iter()
                .map(|e| ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(e)))
                .collect(),
            clauses: Vec::new(),
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: Vec::new(),
    })
}

fn aliased(expr: Expr, alias: &str) -> ast::SelectItem {
    ast::SelectItem::ExprWithAlias {
        expr,
        alias: exact(alias),
    }
}

/// `SELECT projection FROM from WHERE selection`.
fn select(
    projection: Vec<ast::SelectItem>,
    from: Vec<ast::TableWithJoins>,
    selection: Option<Expr>,
) -> ast::Query {
    let select = ast::Select {
        select_token: AttachedToken::empty(),
        optimizer_hints: Vec::new(),
        distinct: None,
        select_modifiers: None,
        top: None,
        top_before_distinct: false,
        projection,
        exclude: None,
        into: None,
        from,
        lateral_views: Vec::new(),
        prewhere: None,
        selection,
        connect_by: Vec::new(),
        group_by: ast::GroupByExpr::Expressions(Vec::new(), Vec::new()),
        cluster_by: Vec::new(),
        distribute_by: Vec::new(),
        sort_by: Vec::new(),
        having: None,
        named_window: Vec::new(),
        qualify: None,
        window_before_qualify: false,
        value_table_mode: None,
        flavor: ast::SelectFlavor::Standard,
    };
    ast::Query {
        with: None,
        body: Box::new(ast::SetExpr::Select(Box::new(select))),
        order_by: None,
        limit_clause: None,
        fetch: None,
        locks: Vec::new(),
        for_clause: None,
        settings: None,
        format_clause: None,
        pipe_operators: Vec::new(),
    }
}

fn table(relation: ast::TableFactor) -> ast::TableWithJoins {
    ast::TableWithJoins {
        relation,
        joins: Vec::new(),
    }
}

/// The target of a change and the name its columns are qualified with in the statement.
pub(crate) struct Target {
    /// The table's name in the catalog.
    pub(crate) table: String,
    reference: Ident,
    factor: ast::TableFactor,
}

impl Target {
    pub(crate) fn of(factor: &ast::TableFactor) -> Result<Target> {
        let ast::TableFactor::Table { name, alias, .. } = factor else {
            return Err(unsupported(format!(
                "changing {factor}: the target must be a table"
            )));
        };
        let table = object_name(name)?;
        let reference = match alias {
            Some(a) => a.name.clone(),
            None => name
                .0
                .last()
                .and_then(|p| p.as_ident())
                .cloned()
                .unwrap_or_else(|| exact(&table)),
        };
        Ok(Target {
            table,
            reference,
            factor: factor.clone(),
        })
    }

    /// The statement's target reference with the tagged table in the table's place, under the
    /// name the statement uses for the target.
    fn tagged(&self, tagged: &str) -> ast::TableFactor {
        let mut factor = self.factor.clone();
        if let ast::TableFactor::Table { name, alias, .. } = &mut factor {
            *name = ast::ObjectName::from(vec![exact(tagged)]);
            *alias = Some(ast::TableAlias {
                explicit: true,
                name: self.reference.clone(),
                columns: Vec::new(),
                at: None,
            });
        }
        factor
    }

    fn column(&self, name: &str) -> Expr {
        Expr::CompoundIdentifier(vec![self.reference.clone(), exact(name)])
    }

    /// The `SELECT` list of a change query: the tag columns, the action, the values.
    fn select_list(&self, action: Expr, values: Vec<Expr>) -> Vec<ast::SelectItem> {
        let mut items: Vec<ast::SelectItem> = TAG_COLUMNS
            .iter()
            .map(|c| ast::SelectItem::UnnamedExpr(self.column(c)))
            .collect();
        items.push(aliased(action, ACTION));
        for (j, v) in values.into_iter().enumerate() {
            items.push(aliased(v, &format!("__dirk_v{j}")));
        }
        items
    }
}

/// The target column an assignment sets.
fn assigned_column(schema: &Schema, a: &ast::Assignment) -> Result<usize> {
    let ast::AssignmentTarget::ColumnName(name) = &a.target else {
        return Err(unsupported(format!("assigning to a tuple ({})", a.target)));
    };
    let column = object_name(name)?;
    schema
        .index_of(&column)
        .map_err(|_| DirkError::SchemaMismatch {
            detail: format!("the target has no column `{column}`"),
        })
}

/// `UPDATE t SET ... [FROM ...] WHERE ...` as a change query over `tagged`.
pub(crate) fn update_query(u: &ast::Update, tagged: &str, schema: &Schema) -> Result<ChangeQuery> {
    if !u.table.joins.is_empty() {
        return Err(unsupported("UPDATE of a join: name one target table"));
    }
    if u.returning.is_some() || u.limit.is_some() || !u.order_by.is_empty() || u.or.is_some() {
        return Err(unsupported("UPDATE ... RETURNING / ORDER BY / LIMIT / OR"));
    }
    let target = Target::of(&u.table.relation)?;
    let mut columns = Vec::new();
    let mut values = Vec::new();
    for a in &u.assignments {
        let c = assigned_column(schema, a)?;
        if columns.contains(&c) {
            return Err(unsupported(format!(
                "assigning column `{}` twice",
                schema.field(c).name()
            )));
        }
        columns.push(c);
        values.push(cast_to(a.value.clone(), schema.field(c)));
    }
    let mut from = vec![table(target.tagged(tagged))];
    if let Some(ast::UpdateTableFromKind::BeforeSet(f) | ast::UpdateTableFromKind::AfterSet(f)) =
        &u.from
    {
        from.extend(f.iter().cloned());
    }
    let projection = target.select_list(number(Action::Update as i64), values);
    let updated = (0..columns.len()).collect();
    Ok(ChangeQuery {
        query: select(projection, from, u.selection.clone()),
        columns,
        updated,
        dedupe_deletes: false,
    })
}

/// `DELETE FROM t [USING ...] WHERE ...` as a change query over `tagged`.
pub(crate) fn delete_query(d: &ast::Delete, tagged: &str) -> Result<ChangeQuery> {
    let (ast::FromTable::WithFromKeyword(from) | ast::FromTable::WithoutKeyword(from)) = &d.from;
    if !d.tables.is_empty() || from.len() != 1 || !from[0].joins.is_empty() {
        return Err(unsupported(
            "DELETE from several tables: name one target table",
        ));
    }
    if d.returning.is_some() || d.limit.is_some() || !d.order_by.is_empty() {
        return Err(unsupported("DELETE ... RETURNING / ORDER BY / LIMIT"));
    }
    let target = Target::of(&from[0].relation)?;
    let mut tables = vec![table(target.tagged(tagged))];
    if let Some(using) = &d.using {
        tables.extend(using.iter().cloned());
    }
    let projection = target.select_list(number(Action::Delete as i64), Vec::new());
    Ok(ChangeQuery {
        query: select(projection, tables, d.selection.clone()),
        columns: Vec::new(),
        updated: Vec::new(),
        dedupe_deletes: true,
    })
}

/// `MERGE INTO t USING s ON ... WHEN ...` as a change query over `tagged`: one join of the
/// target and the source (inner, left, right or full, as the clauses need), each joined row
/// given the action and values of the first clause whose condition holds.
pub(crate) fn merge_query(m: &ast::Merge, tagged: &str, schema: &Schema) -> Result<ChangeQuery> {
    if m.output.is_some() {
        return Err(unsupported("MERGE ... OUTPUT"));
    }
    let target = Target::of(&m.table)?;
    let source = match &m.source {
        ast::TableFactor::Table { alias: Some(a), .. }
        | ast::TableFactor::Derived { alias: Some(a), .. } => a.name.clone(),
        ast::TableFactor::Table { name, .. } => {
            name.0
                .last()
                .and_then(|p| p.as_ident())
                .cloned()
                .ok_or_else(|| unsupported(format!("MERGE ... USING {name}")))?
        }
        ast::TableFactor::Derived { .. } => {
            return Err(unsupported("MERGE ... USING a subquery without an alias"))
        }
        other => return Err(unsupported(format!("MERGE ... USING {other}"))),
    };
    let (mut by_target, mut by_source) = (false, false);
    for c in &m.clauses {
        match c.clause_kind {
            ast::MergeClauseKind::Matched => {}
            ast::MergeClauseKind::NotMatched | ast::MergeClauseKind::NotMatchedByTarget => {
                by_target = true
            }
            ast::MergeClauseKind::NotMatchedBySource => by_source = true,
        }
    }
    // Value columns: every target column when rows are inserted, else the assigned ones.
    let mut columns: Vec<usize> = if by_target {
        (0..schema.fields().len()).collect()
    } else {
        Vec::new()
    };
    let mut updated: Vec<usize> = Vec::new();
    // Per clause: its condition, action, and value per target column (by index).
    let mut arms: Vec<(Expr, Action, HashMap<usize, Expr>)> = Vec::new();
    let in_source = "__dirk_in_source";
    let target_row = has_row(&target.reference, TAG_COLUMNS[0]);
    let source_row = has_row(&source, in_source);
    // Which side of the join a row has, as the join type leaves it to be asked.
    let matched = match (by_target, by_source) {
        (false, false) => Expr::value(ast::Value::Boolean(true)),
        (true, false) => target_row.clone(),
        (false, true) => source_row.clone(),
        (true, true) => and(target_row.clone(), source_row.clone()),
    };
    for c in &m.clauses {
        let category = match c.clause_kind {
            ast::MergeClauseKind::Matched => matched.clone(),
            ast::MergeClauseKind::NotMatched | ast::MergeClauseKind::NotMatchedByTarget => {
                not(target_row.clone())
            }
            ast::MergeClauseKind::NotMatchedBySource => not(source_row.clone()),
        };
        let condition = match &c.predicate {
            Some(p) => and(category, p.clone()),
            None => category,
        };
        let inserting = matches!(
            c.clause_kind,
            ast::MergeClauseKind::NotMatched | ast::MergeClauseKind::NotMatchedByTarget
        );
        match (&c.action, inserting) {
            (ast::MergeAction::Update(u), false) => {
                if u.update_predicate.is_some() || u.delete_predicate.is_some() {
                    return Err(unsupported("MERGE ... UPDATE ... WHERE / DELETE WHERE"));
                }
                let mut values = HashMap::new();
                for a in &u.assignments {
                    let col = assigned_column(schema, a)?;
                    if values
                        .insert(col, cast_to(a.value.clone(), schema.field(col)))
                        .is_some()
                    {
                        return Err(unsupported(format!(
                            "assigning column `{}` twice",
                            schema.field(col).name()
                        )));
                    }
                    if !columns.contains(&col) {
                        columns.push(col);
                    }
                    let j = columns.iter().position(|x| *x == col).expect("added");
                    if !updated.contains(&j) {
                        updated.push(j);
                    }
                }
                arms.push((condition, Action::Update, values));
            }
            (ast::MergeAction::Delete { .. }, false) => {
                arms.push((condition, Action::Delete, HashMap::new()))
            }
            (ast::MergeAction::Insert(i), true) => {
                if i.insert_predicate.is_some() {
                    return Err(unsupported("MERGE ... INSERT ... WHERE"));
                }
                let ast::MergeInsertKind::Values(v) = &i.kind else {
                    return Err(unsupported("MERGE ... INSERT ROW"));
                };
                let [ast::Parens { content: row, .. }] = v.rows.as_slice() else {
                    return Err(unsupported(
                        "MERGE ... INSERT with other than one VALUES row",
                    ));
                };
                let targets: Vec<usize> = if i.columns.is_empty() {
                    (0..schema.fields().len()).collect()
                } else {
                    i.columns
                        .iter()
                        .map(|n| {
                            let c = object_name(n)?;
                            schema.index_of(&c).map_err(|_| DirkError::SchemaMismatch {
                                detail: format!("the target has no column `{c}`"),
                            })
                        })
                        .collect::<Result<_>>()?
                };
                if targets.len() != row.len() {
                    return Err(DirkError::SchemaMismatch {
                        detail: format!(
                            "MERGE ... INSERT names {} columns and gives {} values",
                            targets.len(),
                            row.len()
                        ),
                    });
                }
                let values = targets
                    .iter()
                    .zip(row)
                    .map(|(&c, e)| (c, cast_to(e.clone(), schema.field(c))))
                    .collect();
                arms.push((condition, Action::Insert, values));
            }
            (action, _) => {
                return Err(DirkError::SchemaMismatch {
                    detail: format!("WHEN {} cannot {action}", c.clause_kind),
                })
            }
        }
    }
    let action = case(
        arms.iter()
            .map(|(cond, action, _)| (cond.clone(), number(*action as i64)))
            .collect(),
        number(0),
    );
    let values: Vec<Expr> = columns
        .iter()
        .map(|&col| {
            let field = schema.field(col);
            let when = arms
                .iter()
                .map(|(cond, action, assigned)| {
                    let v = match (assigned.get(&col), action) {
                        (Some(v), _) => v.clone(),
                        // An update that does not assign this column writes the value it has.
                        (None, Action::Update) => target.column(field.name()),
                        (None, _) => cast_to(null(), field),
                    };
                    (cond.clone(), v)
                })
                .collect();
            case(when, cast_to(null(), field))
        })
        .collect();
    let source_factor = if by_source {
        // A marker that is NULL exactly where a target row found no source row.
        let marker = select(
            vec![
                ast::SelectItem::Wildcard(ast::WildcardAdditionalOptions::default()),
                aliased(Expr::value(ast::Value::Boolean(true)), in_source),
            ],
            vec![table(m.source.clone())],
            None,
        );
        ast::TableFactor::Derived {
            lateral: false,
            subquery: Box::new(marker),
            alias: Some(ast::TableAlias {
                explicit: true,
                name: source.clone(),
                columns: Vec::new(),
                at: None,
            }),
            sample: None,
        }
    } else {
        m.source.clone()
    };
    let on = ast::JoinConstraint::On((*m.on).clone());
    let join_operator = match (by_target, by_source) {
        (false, false) => ast::JoinOperator::Inner(on),
        (false, true) => ast::JoinOperator::LeftOuter(on),
        (true, false) => ast::JoinOperator::RightOuter(on),
        (true, true) => ast::JoinOperator::FullOuter(on),
    };
    let from = ast::TableWithJoins {
        relation: target.tagged(tagged),
        joins: vec![ast::Join {
            relation: source_factor,
            global: false,
            join_operator,
        }],
    };
    Ok(ChangeQuery {
        query: select(target.select_list(action, values), vec![from], None),
        columns,
        updated,
        dedupe_deletes: false,
    })
}
