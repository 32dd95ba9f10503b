//! What datafusion-proto does not carry over, carried over.
//!
//! datafusion-proto sends an expression's output type but not its output field, so field
//! metadata (Arrow extension types such as `arrow.uuid`, metadata a function sets) would be lost
//! inside a fragment, and a query's answer would differ from DataFusion's on one node:
//! - a scalar function's return field is asked of the function again when it is decoded, from
//!   the decoded arguments, as DataFusion's planner asked it;
//! - a cast to an explicit target field (`CAST(x AS UUID)`) travels as a Dirk expression node
//!   that holds the whole field, decoded by [`decode_expr`] through [`crate::exec::DirkCodec`].

use arrow::datatypes::{Field, Schema};
use datafusion::common::{internal_err, DataFusionError, Result};
use datafusion::logical_expr::ReturnFieldArgs;
use datafusion::physical_expr::expressions::{CastExpr, Literal, TryCastExpr};
use datafusion::physical_expr::{PhysicalExpr, ScalarFunctionExpr};
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::physical_plan::to_proto::serialize_physical_expr_with_converter;
use datafusion_proto::physical_plan::{
    PhysicalExtensionCodec, PhysicalPlanDecodeContext, PhysicalPlanNodeExt,
    PhysicalProtoConverterExtension,
};
use datafusion_proto::protobuf::{
    physical_expr_node::ExprType, physical_plan_node::PhysicalPlanType, PhysicalExprNode,
    PhysicalExtensionExprNode, PhysicalPlanNode,
};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The converter Dirk encodes and decodes fragments with.
pub(crate) struct FieldPreservingConverter;

/// Checks that `bytes` is an Arrow IPC stream whose messages fit in it, before arrow's stream
/// reader sees it: the reader allocates each message's metadata and body by the lengths the
/// message claims, so a fragment with a bogus length in a memory scan (a `VALUES` list) would
/// abort the worker on a failed allocation instead of failing its task.
fn check_ipc_stream(mut bytes: &[u8]) -> Result<()> {
    let bad = |what: &str| {
        DataFusionError::Plan(format!(
            "a memory scan in the plan fragment is not valid Arrow IPC: {what}"
        ))
    };
    let read_i32 = |b: &[u8]| -> Result<i32> {
        let four = b.get(..4).ok_or_else(|| bad("truncated length"))?;
        Ok(i32::from_le_bytes(four.try_into().expect("4 bytes")))
    };
    while !bytes.is_empty() {
        let mut len = read_i32(bytes)?;
        bytes = &bytes[4..];
        if len == -1 {
            len = read_i32(bytes)?;
            bytes = &bytes[4..];
        }
        if len == 0 {
            return Ok(());
        }
        let len = usize::try_from(len).map_err(|_| bad("negative length"))?;
        let meta = bytes
            .get(..len)
            .ok_or_else(|| bad("metadata past the end"))?;
        let meta = arrow::buffer::Buffer::from_slice_ref(meta);
        let message =
            arrow::ipc::root_as_message(&meta).map_err(|e| bad(&format!("metadata: {e}")))?;
        let body = usize::try_from(message.bodyLength()).map_err(|_| bad("negative body"))?;
        if body > bytes.len() - len {
            return Err(bad("body past the end"));
        }
        bytes = &bytes[len + body..];
    }
    Ok(())
}

/// A Dirk expression node inside a fragment (the payload of a proto extension expression).
#[derive(Serialize, Deserialize)]
enum ExprNode {
    /// `CAST` (or `TRY_CAST`) of the one input to exactly this field.
    CastToField { field: Field, try_cast: bool },
}

impl PhysicalProtoConverterExtension for FieldPreservingConverter {
    fn proto_to_execution_plan(
        &self,
        proto: &PhysicalPlanNode,
        ctx: &PhysicalPlanDecodeContext<'_>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if let Some(PhysicalPlanType::MemoryScan(scan)) = &proto.physical_plan_type {
            for partition in &scan.partitions {
                check_ipc_stream(partition)?;
            }
        }
        self.default_proto_to_execution_plan(proto, ctx)
    }

    fn execution_plan_to_proto(
        &self,
        plan: &Arc<dyn ExecutionPlan>,
        codec: &dyn PhysicalExtensionCodec,
    ) -> Result<PhysicalPlanNode> {
        PhysicalPlanNode::try_from_physical_plan_with_converter(Arc::clone(plan), codec, self)
    }

    fn proto_to_physical_expr(
        &self,
        proto: &PhysicalExprNode,
        input_schema: &Schema,
        ctx: &PhysicalPlanDecodeContext<'_>,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        let expr = self.default_proto_to_physical_expr(proto, input_schema, ctx)?;
        match expr.downcast_ref::<ScalarFunctionExpr>() {
            Some(call) => with_planned_return_field(call, input_schema).map(|e| e.unwrap_or(expr)),
            None => Ok(expr),
        }
    }

    fn physical_expr_to_proto(
        &self,
        expr: &Arc<dyn PhysicalExpr>,
        codec: &dyn PhysicalExtensionCodec,
    ) -> Result<PhysicalExprNode> {
        let cast = if let Some(c) = expr.downcast_ref::<CastExpr>() {
            c.target_metadata()
                .map(|_| (c.expr(), c.target_field(), false))
        } else if let Some(c) = expr.downcast_ref::<TryCastExpr>() {
            c.target_metadata()
                .map(|_| (c.expr(), c.target_field(), true))
        } else {
            None
        };
        let Some((input, field, try_cast)) = cast else {
            return serialize_physical_expr_with_converter(expr, codec, self);
        };
        let node = ExprNode::CastToField {
            field: field.as_ref().clone(),
            try_cast,
        };
        Ok(PhysicalExprNode {
            expr_id: None,
            expr_type: Some(ExprType::Extension(PhysicalExtensionExprNode {
                expr: serde_json::to_vec(&node).map_err(|e| internal(e.to_string()))?,
                inputs: vec![self.physical_expr_to_proto(input, codec)?],
            })),
        })
    }
}

/// Decodes a Dirk expression node (see [`ExprNode`]).
pub(crate) fn decode_expr(
    buf: &[u8],
    inputs: &[Arc<dyn PhysicalExpr>],
) -> Result<Arc<dyn PhysicalExpr>> {
    let node: ExprNode = serde_json::from_slice(buf).map_err(|e| internal(e.to_string()))?;
    match node {
        ExprNode::CastToField { field, try_cast } => {
            let [input] = inputs else {
                return internal_err!("a cast node has {} inputs, not 1", inputs.len());
            };
            let input = Arc::clone(input);
            let field = Arc::new(field);
            Ok(if try_cast {
                Arc::new(TryCastExpr::new_with_target_field(input, field))
            } else {
                Arc::new(CastExpr::new_with_target_field(input, field, None))
            })
        }
    }
}

/// `call` with the return field its function gives for these arguments, where that field's
/// metadata differs from the decoded one; `None` where nothing is lost.
fn with_planned_return_field(
    call: &ScalarFunctionExpr,
    input_schema: &Schema,
) -> Result<Option<Arc<dyn PhysicalExpr>>> {
    let arg_fields = call
        .args()
        .iter()
        .map(|a| a.return_field(input_schema))
        .collect::<Result<Vec<_>>>()?;
    let scalar_arguments: Vec<_> = call
        .args()
        .iter()
        .map(|a| a.downcast_ref::<Literal>().map(|l| l.value()))
        .collect();
    let planned = call.fun().return_field_from_args(ReturnFieldArgs {
        arg_fields: &arg_fields,
        scalar_arguments: &scalar_arguments,
    })?;
    let decoded = call.return_field(input_schema)?;
    if planned.metadata() == decoded.metadata() {
        return Ok(None);
    }
    let field = decoded
        .as_ref()
        .clone()
        .with_metadata(planned.metadata().clone());
    Ok(Some(Arc::new(ScalarFunctionExpr::new(
        call.name(),
        Arc::new(call.fun().clone()),
        call.args().to_vec(),
        Arc::new(field),
        Arc::new(call.config_options().clone()),
    ))))
}

fn internal(message: String) -> DataFusionError {
    DataFusionError::Internal(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::DataType;
    use datafusion::execution::TaskContext;
    use datafusion::physical_expr::expressions::Column;
    use datafusion::physical_plan::empty::EmptyExec;
    use datafusion::physical_plan::projection::{ProjectionExec, ProjectionExpr};
    use std::collections::HashMap;

    #[test]
    fn a_cast_to_a_field_keeps_its_metadata_through_a_fragment() {
        let schema = Arc::new(Schema::new(vec![Field::new("raw", DataType::Int32, true)]));
        let field = Field::new("", DataType::Int64, true).with_metadata(HashMap::from([(
            "ARROW:extension:name".to_string(),
            "dirk.test".to_string(),
        )]));
        let input: Arc<dyn PhysicalExpr> = Arc::new(Column::new("raw", 0));
        let exprs = vec![
            ProjectionExpr::new(
                Arc::new(CastExpr::new_with_target_field(
                    Arc::clone(&input),
                    Arc::new(field.clone()),
                    None,
                )),
                "cast",
            ),
            ProjectionExpr::new(
                Arc::new(TryCastExpr::new_with_target_field(input, Arc::new(field))),
                "try_cast",
            ),
        ];
        let plan: Arc<dyn ExecutionPlan> =
            Arc::new(ProjectionExec::try_new(exprs, Arc::new(EmptyExec::new(schema))).unwrap());
        let bytes = crate::kernels::fragment::encode_plan(&plan).unwrap();
        let decoded =
            crate::kernels::fragment::decode_fragment(&bytes, &TaskContext::default()).unwrap();
        for f in decoded.schema().fields() {
            assert_eq!(
                f.metadata().get("ARROW:extension:name").map(String::as_str),
                Some("dirk.test"),
                "{}",
                f.name()
            );
            assert_eq!(f.data_type(), &DataType::Int64);
        }
    }
}
