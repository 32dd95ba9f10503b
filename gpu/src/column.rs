//! Arrow columns in device memory.
//!
//! Values are copied as Arrow lays them out (fixed-width, little-endian); validity stays
//! bit-packed, LSB first, re-based to bit offset 0 so that a sliced array (non-zero offset) is
//! handled; a column without nulls has no validity buffer (kernels read a null pointer as "all
//! valid"). Booleans are bit-packed like validity.

use std::sync::Arc;

use arrow::array::{make_array, Array, ArrayData, ArrayRef, AsArray, RecordBatch};
use arrow::buffer::{BooleanBuffer, Buffer, NullBuffer};
use arrow::datatypes::{
    DataType, Date32Type, Float32Type, Float64Type, Int32Type, Int64Type, SchemaRef,
};

use crate::device::{Device, DeviceBuffer};
use crate::error::{GpuError, Result};

/// A column type the GPU backend holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GpuType {
    /// `Int32`
    Int32,
    /// `Int64`
    Int64,
    /// `Float32`
    Float32,
    /// `Float64`
    Float64,
    /// `Date32` (days since the epoch, as `int`)
    Date32,
    /// `Boolean`, bit-packed
    Boolean,
}

impl GpuType {
    /// The GPU type of an Arrow type, if it has one.
    pub fn of(dt: &DataType) -> Option<GpuType> {
        Some(match dt {
            DataType::Int32 => GpuType::Int32,
            DataType::Int64 => GpuType::Int64,
            DataType::Float32 => GpuType::Float32,
            DataType::Float64 => GpuType::Float64,
            DataType::Date32 => GpuType::Date32,
            DataType::Boolean => GpuType::Boolean,
            _ => return None,
        })
    }

    /// The Arrow type.
    pub fn data_type(self) -> DataType {
        match self {
            GpuType::Int32 => DataType::Int32,
            GpuType::Int64 => DataType::Int64,
            GpuType::Float32 => DataType::Float32,
            GpuType::Float64 => DataType::Float64,
            GpuType::Date32 => DataType::Date32,
            GpuType::Boolean => DataType::Boolean,
        }
    }

    /// The C type of one value in a kernel (`u8` for booleans, which are bit-packed).
    pub(crate) fn c_type(self) -> &'static str {
        match self {
            GpuType::Int32 | GpuType::Date32 => "i32",
            GpuType::Int64 => "i64",
            GpuType::Float32 => "float",
            GpuType::Float64 => "double",
            GpuType::Boolean => "u8",
        }
    }

    /// Bytes per value; booleans are bits and report 0.
    pub(crate) fn width(self) -> usize {
        match self {
            GpuType::Int32 | GpuType::Date32 | GpuType::Float32 => 4,
            GpuType::Int64 | GpuType::Float64 => 8,
            GpuType::Boolean => 0,
        }
    }

    /// Integer-valued (grouping keys, exact arithmetic).
    pub(crate) fn is_integer(self) -> bool {
        matches!(self, GpuType::Int32 | GpuType::Int64 | GpuType::Date32)
    }

    /// Floating point.
    pub(crate) fn is_float(self) -> bool {
        matches!(self, GpuType::Float32 | GpuType::Float64)
    }
}

/// One column resident on a device.
#[derive(Debug)]
pub struct DeviceColumn {
    ty: GpuType,
    len: usize,
    null_count: usize,
    values: DeviceBuffer,
    validity: Option<DeviceBuffer>,
    /// Smallest and largest valid value of an integer column, taken at upload: the aggregation
    /// sizes dense group tables from it without a pass over the data.
    range: Option<(i64, i64)>,
}

impl DeviceColumn {
    /// Copies an Arrow array to `device`.
    pub fn upload(device: &Device, array: &dyn Array) -> Result<DeviceColumn> {
        let ty = GpuType::of(array.data_type()).ok_or_else(|| {
            GpuError::Unsupported(format!("columns of type {}", array.data_type()))
        })?;
        let len = array.len();
        let null_count = array.null_count();
        let values_bytes: Buffer = match ty {
            GpuType::Int32 => array.as_primitive::<Int32Type>().values().inner().clone(),
            GpuType::Int64 => array.as_primitive::<Int64Type>().values().inner().clone(),
            GpuType::Float32 => array.as_primitive::<Float32Type>().values().inner().clone(),
            GpuType::Float64 => array.as_primitive::<Float64Type>().values().inner().clone(),
            GpuType::Date32 => array.as_primitive::<Date32Type>().values().inner().clone(),
            GpuType::Boolean => array.as_boolean().values().sliced(),
        };
        let validity = match array.logical_nulls() {
            Some(nulls) if null_count > 0 => {
                Some(device.upload(nulls.inner().sliced().as_slice())?)
            }
            _ => None,
        };
        let range = if ty.is_integer() {
            integer_range(array)
        } else {
            None
        };
        let values = device.upload(values_bytes.as_slice())?;
        Ok(Self::from_parts(
            ty, len, null_count, values, validity, range,
        ))
    }

    /// A column built from device buffers a kernel wrote.
    pub(crate) fn from_parts(
        ty: GpuType,
        len: usize,
        null_count: usize,
        values: DeviceBuffer,
        validity: Option<DeviceBuffer>,
        range: Option<(i64, i64)>,
    ) -> Self {
        DeviceColumn {
            ty,
            len,
            null_count,
            values,
            validity,
            range,
        }
    }

    /// Copies the column back into an Arrow array.
    pub fn download(&self, device: &Device) -> Result<ArrayRef> {
        // Copied into Arrow's aligned buffers (a Vec<u8> is only byte-aligned).
        let mut values = device.download(&self.values)?;
        let value_bytes = match self.ty {
            GpuType::Boolean => self.len.div_ceil(8),
            t => self.len * t.width(),
        };
        values.resize(value_bytes, 0);
        let nulls = match &self.validity {
            Some(v) => {
                let mut bits = device.download(v)?;
                bits.resize(self.len.div_ceil(8), 0);
                Some(NullBuffer::new(BooleanBuffer::new(
                    Buffer::from_slice_ref(&bits),
                    0,
                    self.len,
                )))
            }
            None => None,
        };
        let data = ArrayData::builder(self.ty.data_type())
            .len(self.len)
            .add_buffer(Buffer::from_slice_ref(&values))
            .nulls(nulls)
            .build()?;
        Ok(make_array(data))
    }

    /// The column's type.
    pub fn gpu_type(&self) -> GpuType {
        self.ty
    }

    /// Rows.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the column has no rows.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// NULLs.
    pub fn null_count(&self) -> usize {
        self.null_count
    }

    /// Device bytes held (values and validity).
    pub fn device_bytes(&self) -> usize {
        self.values.len() + self.validity.as_ref().map_or(0, |v| v.len())
    }

    /// Smallest and largest valid value of an integer column; `None` for other types and for
    /// columns with no valid value.
    pub fn range(&self) -> Option<(i64, i64)> {
        self.range
    }

    pub(crate) fn values(&self) -> &DeviceBuffer {
        &self.values
    }

    pub(crate) fn validity(&self) -> Option<&DeviceBuffer> {
        self.validity.as_ref()
    }
}

fn integer_range(array: &dyn Array) -> Option<(i64, i64)> {
    use arrow::compute::{max, min};
    match array.data_type() {
        DataType::Int32 => {
            let a = array.as_primitive::<Int32Type>();
            Some((min(a)? as i64, max(a)? as i64))
        }
        DataType::Date32 => {
            let a = array.as_primitive::<Date32Type>();
            Some((min(a)? as i64, max(a)? as i64))
        }
        DataType::Int64 => {
            let a = array.as_primitive::<Int64Type>();
            Some((min(a)?, max(a)?))
        }
        _ => None,
    }
}

/// A record batch resident on a device: what a GPU worker keeps across queries.
#[derive(Debug)]
pub struct DeviceBatch {
    schema: SchemaRef,
    columns: Vec<Arc<DeviceColumn>>,
    rows: usize,
}

impl DeviceBatch {
    /// Uploads every column of `batch`; a column of a type the GPU does not hold is an error
    /// (project it away first).
    pub fn upload(device: &Device, batch: &RecordBatch) -> Result<DeviceBatch> {
        let columns = batch
            .columns()
            .iter()
            .map(|c| DeviceColumn::upload(device, c.as_ref()).map(Arc::new))
            .collect::<Result<Vec<_>>>()?;
        Ok(DeviceBatch {
            schema: batch.schema(),
            columns,
            rows: batch.num_rows(),
        })
    }

    /// A batch of device columns (all of `rows` rows).
    pub fn new(schema: SchemaRef, columns: Vec<Arc<DeviceColumn>>, rows: usize) -> Self {
        DeviceBatch {
            schema,
            columns,
            rows,
        }
    }

    /// Copies the batch back into a record batch.
    pub fn download(&self, device: &Device) -> Result<RecordBatch> {
        let arrays = self
            .columns
            .iter()
            .map(|c| c.download(device))
            .collect::<Result<Vec<_>>>()?;
        Ok(RecordBatch::try_new(self.schema.clone(), arrays)?)
    }

    /// The schema.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The columns.
    pub fn columns(&self) -> &[Arc<DeviceColumn>] {
        &self.columns
    }

    /// Rows.
    pub fn num_rows(&self) -> usize {
        self.rows
    }

    /// Device bytes held by all columns.
    pub fn device_bytes(&self) -> usize {
        self.columns.iter().map(|c| c.device_bytes()).sum()
    }
}
