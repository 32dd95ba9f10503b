//! Counting what a task reads from storage: every store a task's runtime hands out is wrapped
//! so that its reads (bytes received) and requests add up in the task's [`StorageMeter`], which
//! the fragment kernel reports with the task (`EXPLAIN ANALYZE` shows it per stage). Footers
//! served from the worker's metadata cache are not reads, and are not counted.

use async_trait::async_trait;
use datafusion::common::Result;
use datafusion::execution::object_store::ObjectStoreRegistry;
use dirk_engine::StorageRead;
use futures::stream::BoxStream;
use futures::StreamExt as _;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use url::Url;

/// One task's count of bytes and requests read from storage.
#[derive(Debug, Default)]
pub(crate) struct StorageMeter {
    bytes: AtomicU64,
    requests: AtomicU64,
}

impl StorageMeter {
    fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    fn received(&self, bytes: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// What was counted so far.
    pub(crate) fn read(&self) -> StorageRead {
        StorageRead {
            bytes: self.bytes.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
        }
    }
}

/// A registry whose stores count into `meter`.
#[derive(Debug)]
pub(crate) struct MeteredStores {
    inner: Arc<dyn ObjectStoreRegistry>,
    meter: Arc<StorageMeter>,
}

impl MeteredStores {
    /// `inner`'s stores, counting into `meter`.
    pub(crate) fn new(inner: Arc<dyn ObjectStoreRegistry>, meter: Arc<StorageMeter>) -> Self {
        MeteredStores { inner, meter }
    }
}

impl ObjectStoreRegistry for MeteredStores {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.inner.register_store(url, store)
    }

    fn get_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        Ok(Arc::new(MeteredStore {
            inner: self.inner.get_store(url)?,
            meter: Arc::clone(&self.meter),
        }))
    }
}

/// A store that counts its reads and requests.
#[derive(Debug)]
struct MeteredStore {
    inner: Arc<dyn ObjectStore>,
    meter: Arc<StorageMeter>,
}

impl std::fmt::Display for MeteredStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

#[async_trait]
impl ObjectStore for MeteredStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.meter.request();
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.meter.request();
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.meter.request();
        let head = options.head;
        let result = self.inner.get_opts(location, options).await?;
        if head {
            return Ok(result);
        }
        // A body is counted as it streams in; a local file handed over whole counts its range.
        let meter = Arc::clone(&self.meter);
        let payload = match result.payload {
            GetResultPayload::Stream(stream) => GetResultPayload::Stream(
                stream
                    .inspect(move |chunk| {
                        if let Ok(bytes) = chunk {
                            meter.received(bytes.len() as u64);
                        }
                    })
                    .boxed(),
            ),
            local_file => {
                meter.received(result.range.end - result.range.start);
                local_file
            }
        };
        Ok(GetResult { payload, ..result })
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[std::ops::Range<u64>],
    ) -> object_store::Result<Vec<bytes::Bytes>> {
        // The inner store may merge nearby ranges into one request: count at least one.
        self.meter.request();
        let got = self.inner.get_ranges(location, ranges).await?;
        self.meter
            .received(got.iter().map(|b| b.len() as u64).sum());
        Ok(got)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.meter.request();
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.meter.request();
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.meter.request();
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.meter.request();
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.meter.request();
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.meter.request();
        self.inner.rename_opts(from, to, options).await
    }
}
