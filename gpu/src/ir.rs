//! `GExpr`: the subset of DataFusion physical expressions the GPU evaluates, with literals lifted
//! out as kernel parameters.
//!
//! Lowering either succeeds for the whole expression or says which node is outside the subset;
//! the caller then runs the work on the CPU. Nothing is approximated.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::expressions::{
    BinaryExpr, CastExpr, Column, InListExpr, IsNotNullExpr, IsNullExpr, Literal, NotExpr,
};
use datafusion::physical_expr::PhysicalExpr;

use crate::column::GpuType;
use crate::error::{GpuError, Result};

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// `=`
    Eq,
    /// `<>`
    NotEq,
    /// `<`
    Lt,
    /// `<=`
    LtEq,
    /// `>`
    Gt,
    /// `>=`
    GtEq,
}

/// An arithmetic operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArithOp {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
}

/// A literal value passed to the kernel as a parameter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Param {
    /// Int32 or Date32
    I32(i32),
    /// Int64
    I64(i64),
    /// Float32
    F32(f32),
    /// Float64
    F64(f64),
}

/// A GPU expression node.
#[derive(Debug, Clone, PartialEq)]
pub enum GExpr {
    /// Input column, by its position in the device batch.
    Column {
        /// Position in the device batch.
        index: usize,
        /// Type.
        ty: GpuType,
    },
    /// A non-NULL numeric literal: parameter `slot` of the kernel.
    Param {
        /// Parameter slot.
        slot: usize,
        /// Type.
        ty: GpuType,
    },
    /// A boolean literal (part of the kernel's shape).
    Bool(bool),
    /// A NULL literal of a type.
    Null(GpuType),
    /// A comparison of two operands of one type.
    Cmp(CmpOp, Box<GExpr>, Box<GExpr>),
    /// Kleene AND.
    And(Box<GExpr>, Box<GExpr>),
    /// Kleene OR.
    Or(Box<GExpr>, Box<GExpr>),
    /// NOT.
    Not(Box<GExpr>),
    /// `IS NULL` (`negated`: `IS NOT NULL`).
    IsNull(Box<GExpr>, bool),
    /// Arithmetic on two operands of one numeric type.
    Arith(ArithOp, Box<GExpr>, Box<GExpr>),
    /// A cast between numeric types.
    Cast(Box<GExpr>, GpuType),
    /// `IN (list)` of literals (`negated`: `NOT IN`).
    InList(Box<GExpr>, Vec<GExpr>, bool),
}

impl GExpr {
    /// The node's result type.
    pub fn ty(&self) -> GpuType {
        match self {
            GExpr::Column { ty, .. } | GExpr::Param { ty, .. } | GExpr::Null(ty) => *ty,
            GExpr::Cast(_, ty) => *ty,
            GExpr::Arith(_, l, _) => l.ty(),
            GExpr::Bool(_)
            | GExpr::Cmp(..)
            | GExpr::And(..)
            | GExpr::Or(..)
            | GExpr::Not(_)
            | GExpr::IsNull(..)
            | GExpr::InList(..) => GpuType::Boolean,
        }
    }

    /// The canonical shape: equal shapes compile to the same kernel whatever the literal values.
    pub fn shape(&self) -> String {
        match self {
            GExpr::Column { index, ty } => format!("c{index}:{ty:?}"),
            GExpr::Param { slot, ty } => format!("p{slot}:{ty:?}"),
            GExpr::Bool(b) => format!("{b}"),
            GExpr::Null(ty) => format!("null:{ty:?}"),
            GExpr::Cmp(op, l, r) => format!("({} {op:?} {})", l.shape(), r.shape()),
            GExpr::And(l, r) => format!("({} and {})", l.shape(), r.shape()),
            GExpr::Or(l, r) => format!("({} or {})", l.shape(), r.shape()),
            GExpr::Not(e) => format!("(not {})", e.shape()),
            GExpr::IsNull(e, neg) => {
                format!("({} isnull{})", e.shape(), if *neg { "!" } else { "" })
            }
            GExpr::Arith(op, l, r) => format!("({} {op:?} {})", l.shape(), r.shape()),
            GExpr::Cast(e, ty) => format!("({} as {ty:?})", e.shape()),
            GExpr::InList(e, list, neg) => format!(
                "({} in{} [{}])",
                e.shape(),
                if *neg { "!" } else { "" },
                list.iter().map(|x| x.shape()).collect::<Vec<_>>().join(",")
            ),
        }
    }

    /// Every input column the expression reads, in first-use order.
    pub fn columns(&self, out: &mut Vec<(usize, GpuType)>) {
        match self {
            GExpr::Column { index, ty } => {
                if !out.iter().any(|(i, _)| i == index) {
                    out.push((*index, *ty))
                }
            }
            GExpr::Param { .. } | GExpr::Bool(_) | GExpr::Null(_) => {}
            GExpr::Cmp(_, l, r) | GExpr::And(l, r) | GExpr::Or(l, r) | GExpr::Arith(_, l, r) => {
                l.columns(out);
                r.columns(out);
            }
            GExpr::Not(e) | GExpr::IsNull(e, _) | GExpr::Cast(e, _) => e.columns(out),
            GExpr::InList(e, list, _) => {
                e.columns(out);
                list.iter().for_each(|x| x.columns(out));
            }
        }
    }
}

/// Lowers DataFusion physical expressions to [`GExpr`], collecting literal parameters. One
/// `Lowering` serves every expression of one kernel (a filter and the aggregate arguments), so
/// parameter slots are numbered across them.
#[derive(Debug)]
pub struct Lowering<'a> {
    schema: &'a Schema,
    /// Literal values, by slot.
    pub params: Vec<Param>,
}

fn unsupported<T>(what: impl Into<String>) -> Result<T> {
    Err(GpuError::Unsupported(what.into()))
}

impl<'a> Lowering<'a> {
    /// Columns are resolved by name in `schema`, the device batch's schema.
    pub fn new(schema: &'a Schema) -> Self {
        Lowering {
            schema,
            params: Vec::new(),
        }
    }

    /// Lowers one expression.
    pub fn lower(&mut self, expr: &Arc<dyn PhysicalExpr>) -> Result<GExpr> {
        let any = expr.as_ref();
        if let Some(c) = any.downcast_ref::<Column>() {
            let index = self.schema.index_of(c.name()).map_err(|_| {
                GpuError::Unsupported(format!("column {} is not resident on the device", c.name()))
            })?;
            let dt = self.schema.field(index).data_type();
            let ty = GpuType::of(dt).ok_or_else(|| {
                GpuError::Unsupported(format!("column {} of type {dt}", c.name()))
            })?;
            return Ok(GExpr::Column { index, ty });
        }
        if let Some(l) = any.downcast_ref::<Literal>() {
            return self.literal(l.value());
        }
        if let Some(b) = any.downcast_ref::<BinaryExpr>() {
            let l = self.lower(b.left())?;
            let r = self.lower(b.right())?;
            return binary(*b.op(), l, r);
        }
        if let Some(n) = any.downcast_ref::<NotExpr>() {
            let e = self.lower(n.arg())?;
            return if e.ty() == GpuType::Boolean {
                Ok(GExpr::Not(Box::new(e)))
            } else {
                unsupported(format!("NOT of {:?}", e.ty()))
            };
        }
        if let Some(n) = any.downcast_ref::<IsNullExpr>() {
            return Ok(GExpr::IsNull(Box::new(self.lower(n.arg())?), false));
        }
        if let Some(n) = any.downcast_ref::<IsNotNullExpr>() {
            return Ok(GExpr::IsNull(Box::new(self.lower(n.arg())?), true));
        }
        if let Some(c) = any.downcast_ref::<CastExpr>() {
            let e = self.lower(c.expr())?;
            return cast(e, c.cast_type());
        }
        if let Some(i) = any.downcast_ref::<InListExpr>() {
            let e = self.lower(i.expr())?;
            let mut list = Vec::with_capacity(i.list().len());
            for item in i.list() {
                let x = self.lower(item)?;
                if !matches!(x, GExpr::Param { .. } | GExpr::Null(_)) {
                    return unsupported("IN lists of other than literals");
                }
                if x.ty() != e.ty() {
                    return unsupported(format!("IN list of {:?} for {:?}", x.ty(), e.ty()));
                }
                list.push(x);
            }
            if e.ty() == GpuType::Boolean {
                return unsupported("IN lists of booleans");
            }
            return Ok(GExpr::InList(Box::new(e), list, i.negated()));
        }
        unsupported(format!("the expression {expr}"))
    }

    fn literal(&mut self, value: &ScalarValue) -> Result<GExpr> {
        let (param, ty) = match value {
            ScalarValue::Boolean(Some(b)) => return Ok(GExpr::Bool(*b)),
            ScalarValue::Int32(Some(v)) => (Param::I32(*v), GpuType::Int32),
            ScalarValue::Date32(Some(v)) => (Param::I32(*v), GpuType::Date32),
            ScalarValue::Int64(Some(v)) => (Param::I64(*v), GpuType::Int64),
            ScalarValue::Float32(Some(v)) => (Param::F32(*v), GpuType::Float32),
            ScalarValue::Float64(Some(v)) => (Param::F64(*v), GpuType::Float64),
            other => {
                return match GpuType::of(&other.data_type()) {
                    Some(ty) if other.is_null() => Ok(GExpr::Null(ty)),
                    _ => unsupported(format!("literals of type {}", other.data_type())),
                }
            }
        };
        self.params.push(param);
        Ok(GExpr::Param {
            slot: self.params.len() - 1,
            ty,
        })
    }
}

fn binary(op: Operator, l: GExpr, r: GExpr) -> Result<GExpr> {
    let (lt, rt) = (l.ty(), r.ty());
    let cmp = |c| {
        if lt != rt {
            unsupported(format!("comparing {lt:?} with {rt:?}"))
        } else {
            Ok(GExpr::Cmp(c, Box::new(l.clone()), Box::new(r.clone())))
        }
    };
    let arith = |a| {
        if lt != rt || !(lt == GpuType::Int32 || lt == GpuType::Int64 || lt.is_float()) {
            unsupported(format!("arithmetic on {lt:?} and {rt:?}"))
        } else {
            Ok(GExpr::Arith(a, Box::new(l.clone()), Box::new(r.clone())))
        }
    };
    let logic = |and: bool| {
        if lt != GpuType::Boolean || rt != GpuType::Boolean {
            unsupported(format!("AND/OR of {lt:?} and {rt:?}"))
        } else if and {
            Ok(GExpr::And(Box::new(l.clone()), Box::new(r.clone())))
        } else {
            Ok(GExpr::Or(Box::new(l.clone()), Box::new(r.clone())))
        }
    };
    match op {
        Operator::Eq => cmp(CmpOp::Eq),
        Operator::NotEq => cmp(CmpOp::NotEq),
        Operator::Lt => cmp(CmpOp::Lt),
        Operator::LtEq => cmp(CmpOp::LtEq),
        Operator::Gt => cmp(CmpOp::Gt),
        Operator::GtEq => cmp(CmpOp::GtEq),
        Operator::And => logic(true),
        Operator::Or => logic(false),
        Operator::Plus => arith(ArithOp::Add),
        Operator::Minus => arith(ArithOp::Sub),
        Operator::Multiply => arith(ArithOp::Mul),
        Operator::Divide => arith(ArithOp::Div),
        other => unsupported(format!("the operator {other}")),
    }
}

fn cast(e: GExpr, to: &DataType) -> Result<GExpr> {
    let from = e.ty();
    let numeric = |t: GpuType| matches!(t, GpuType::Int32 | GpuType::Int64) || t.is_float();
    match GpuType::of(to) {
        Some(t) if t == from => Ok(e),
        Some(t) if numeric(t) && numeric(from) => Ok(GExpr::Cast(Box::new(e), t)),
        _ => unsupported(format!("CAST from {from:?} to {to}")),
    }
}
